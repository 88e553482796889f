"""Send the journal to the hub over MQTT until the hub says it committed each scan.

The journal is the outbox. This room only reads it and, when an `Ack` arrives,
settles the scans the ack names. A broker PUBACK is not enough to forget a scan:
the broker may hold the message only in memory and die. So a batch counts as
delivered only when the hub's own ack (sent after its commit) names its scans; a
batch with no ack after `ack_timeout_s` is simply sent again, and the hub's
idempotent insert absorbs the copy.

Connection handling is paho's: `connect_async` plus `loop_start` keep retrying
with exponential backoff (`reconnect_delay_set`) for as long as the unit runs, so
a unit that boots while the network is down connects when it comes back. The
session is persistent (`clean_session=False`, client id = unit id) so acks the hub
sends while the unit is briefly away are queued for it by the broker.

The unit's status topic carries a retained `UnitStatus(online=True)` after each
connect, again every `status_every_s` (60 s) and whenever one of the health fields
in `STATUS_CHANGE_FIELDS` (camera_ok, clock_trusted) changes; the broker publishes
the retained last will `online=False` if the unit vanishes. The health figures
(uptime, temperature, disk, decode rate) come from the `health` callable the unit
passes in; the sender thread publishes them, so a stalled frame loop does not stop
the status (it shows as camera_ok=false or a decode rate of 0 instead).

With `on_config`, the unit also subscribes to its retained config topic and hands
each payload to it (`device.remote_config`); when it answers True (applied or
refused) the status goes out at once, so the hub sees `config_version` or
`config_error` without waiting for the minute.

What the hub's ack says of each scan decides what happens to it:

- ``stored``: settled (the journal forgets it a day later);
- refused for good (no ``retry``, or an ack of an older hub, which has no codes): the
  scan is **quarantined** in the journal, kept with the hub's code and reason, counted
  in the status (``quarantined``) and sent no more. A technician can put it back in
  the queue (``doorscan-device quarantine --config FILE --release``) once the cause is
  fixed;
- refused with ``retry`` (the hub lacks a key or a registry record for now), or a whole
  batch refused so: the scans stay pending and are not sent again before a delay that
  starts at `SyncConfig.retry_refused_min_s` and doubles with each such answer, up to
  `retry_refused_max_s`.

The unit also reads the hub's retained `HubStatus` and writes its batches in the
revision the hub announced (`doorscan.wire.codec`): with ``rev`` for a hub of
revision 6 or newer, so that it is answered with codes; without, for an older hub or
none announced, which reads batches as they were before.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from device.answers import Deferrals, read_answer
from device.clock import BOOT_ID, Clock, SystemClock
from device.config import BrokerConfig, SyncConfig
from doorscan import __version__
from doorscan.errors import Refusal
from doorscan.mqtt import (
    ClientFactory,
    ConfirmedPublisher,
    PublishNotConfirmed,
    TlsFiles,
    make_client,
    use_credentials,
    use_tls,
)
from doorscan.wire import (
    REV_FIELD_SINCE,
    WIRE_REVISION,
    Ack,
    HubStatus,
    Scan,
    ScanBatch,
    UnitStatus,
    decode_message,
    encode_message,
    revision_of,
    topic_ack,
    topic_card_revocations,
    topic_config,
    topic_hub_status,
    topic_scans,
    topic_status,
    written_for,
)

__all__ = [
    "MqttSync",
    "Outbox",
    "STATUS_CHANGE_FIELDS",
    "configure_client_auth",
    "unit_client_factory",
]

log = logging.getLogger(__name__)

STATUS_CHANGE_FIELDS = ("camera_ok", "clock_trusted", "update_state")
"""Health fields whose change is published at once, not at the next minute."""

HUB_STATUS_WAIT_S = 5.0
"""After a connect, how long the first batch waits for the hub's retained status at most."""


class Outbox(Protocol):
    """What the sync needs of the journal (device.journal.ScanJournal provides it)."""

    def pending(self, limit: int, skip: Collection[str] = ()) -> list[Scan]: ...

    def settle(self, scan_ids: Iterable[str], at: datetime) -> int: ...

    def quarantine(self, refusals: Iterable[tuple[str, str, str]], at: datetime) -> int: ...

    def quarantine_count(self) -> int: ...

    def backlog(self) -> int: ...


def unit_client_factory(client_id: str) -> mqtt.Client:
    """The production MQTT client of a unit: MQTT 3.1.1, persistent session (docs/wire.md)."""
    return make_client(client_id, persistent=True)


def configure_client_auth(client: mqtt.Client, broker: BrokerConfig) -> None:
    """TLS and credentials from the unit's broker config (shared with the self-test)."""
    if broker.ca_file is not None:
        # The client certificate is how the broker and its ACL know this unit.
        use_tls(client, TlsFiles(broker.ca_file, broker.cert_file, broker.key_file))
    if broker.username:
        use_credentials(client, broker.username, broker.password_file)


@dataclass
class _InFlight:
    scan_ids: frozenset[str]
    sent_at: float  # monotonic


class MqttSync:
    """Drains a journal to the hub; start() once, close() at the end.

    >>> with MqttSync("u1", journal, BrokerConfig(port=1883)) as sync:   # doctest: +SKIP
    ...     sync.notify()        # after each new journal record
    """

    def __init__(
        self,
        unit_id: str,
        outbox: Outbox,
        broker: BrokerConfig,
        sync: SyncConfig | None = None,
        *,
        clock: Clock | None = None,
        client_factory: ClientFactory = unit_client_factory,
        last_scan_at: Callable[[], datetime | None] = lambda: None,
        on_hub_time: Callable[[datetime], None] = lambda hub_time: None,
        health: Callable[[], Mapping[str, Any]] = dict,
        status_every_s: float = 60.0,
        on_config: Callable[[bytes], bool] | None = None,
        on_card_revocations: Callable[[bytes], bool] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`health` returns optional `UnitStatus` fields (uptime_s, camera_ok, ...).

        `wall_clock` is the clock that dates the unit's scans (default: `clock`); a
        status's ``at`` and a batch's ``sent_at`` are read from it, so that the hub can
        compare them with the scans' times (`hub.history`). `clock` keeps the network's
        timeouts on real time.
        """
        self._wall = wall_clock or (clock or SystemClock()).now
        self._on_config_payload = on_config
        self._on_revocations_payload = on_card_revocations
        self.unit_id = unit_id
        self._outbox = outbox
        self._broker = broker
        self._cfg = sync or SyncConfig()
        self._clock = clock or SystemClock()
        self._last_scan_at = last_scan_at
        self._on_hub_time = on_hub_time
        self._health = health
        self._status_every_s = status_every_s
        self._status_sent_at: float | None = None
        self._status_key: tuple[Any, ...] | None = None
        self.statuses_sent = 0
        self._last_status: mqtt.MQTTMessageInfo | None = None
        self._status_acked = False
        self._client = client_factory(unit_id)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        # Set once the broker has handed over the retained hub status (or there is none).
        self._heard_hub = threading.Event()
        self._connected_at = 0.0
        self._barrier_mid: int | None = None
        self._in_flight: dict[str, _InFlight] = {}
        # Scans the hub asked to have again later (device.answers).
        self._deferrals = Deferrals(self._cfg.retry_refused_min_s, self._cfg.retry_refused_max_s)
        self._hub_revision: int | None = None
        self._hub_too_old_logged = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches_sent = 0
        self.acks_received = 0
        self._setup_client()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> MqttSync:
        """Connect in the background and start sending; returns at once."""
        if self._thread is not None:
            return self
        self._client.connect_async(self._broker.host, self._broker.port, self._broker.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-sync-{self.unit_id}", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Say goodbye (retained offline status), stop the threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._connected.is_set():
            # A clean disconnect does not fire the last will, so publish "offline" ourselves.
            try:
                ConfirmedPublisher(self._client).publish(
                    topic_status(self.unit_id), self._status(online=False), retain=True, timeout_s=2
                )
            except PublishNotConfirmed as exc:
                log.warning("offline status not confirmed before disconnect: %s", exc)
            self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSync:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the rest of the unit sees ----------------------------------------------

    @property
    def online(self) -> bool:
        """True while connected to the broker (the scanner's green vs recorded-offline)."""
        return self._connected.is_set()

    def notify(self) -> None:
        """A new scan is in the journal: send soon."""
        self._wake.set()

    @property
    def hub_revision(self) -> int | None:
        """The contract revision the hub announced (`HubStatus`), None before it did."""
        with self._lock:
            return self._hub_revision

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(f.scan_ids) for f in self._in_flight.values())

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- MQTT callbacks (paho's network thread) --------------------------------------

    def _setup_client(self) -> None:
        client = self._client
        # The will is fixed at connect time, so it says only "offline", with no stale figures.
        will = encode_message(UnitStatus(unit_id=self.unit_id, online=False, software=__version__))
        client.will_set(topic_status(self.unit_id), will, qos=1, retain=True)
        client.reconnect_delay_set(
            max(1, int(self._cfg.reconnect_min_s)), max(1, int(self._cfg.reconnect_max_s))
        )
        configure_client_auth(client, self._broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.message_callback_add(topic_ack(self.unit_id), self._on_ack)
        client.message_callback_add(topic_hub_status(), self._on_hub_status)
        if self._on_config_payload is not None:
            client.message_callback_add(topic_config(self.unit_id), self._on_config)
        if self._on_revocations_payload is not None:
            client.message_callback_add(topic_card_revocations(), self._on_revocations)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        topics = [(topic_ack(self.unit_id), 1), (topic_hub_status(), 1)]
        if self._on_config_payload is not None:
            topics.append((topic_config(self.unit_id), 1))
        if self._on_revocations_payload is not None:
            topics.append((topic_card_revocations(), 1))
        client.subscribe(topics)
        # The broker hands a subscription's retained messages (the hub's status) over
        # before it answers a later SUBSCRIBE: this one's SUBACK says they are all in, so
        # the first batch is written in the revision the hub announced.
        self._heard_hub.clear()
        self._connected_at = self._clock.monotonic()
        _, self._barrier_mid = client.subscribe(topic_ack(self.unit_id), 1)
        self.publish_status()
        with self._lock:
            # Whatever was in flight may never be acked (the broker may have lost it): resend.
            self._in_flight.clear()
        self._connected.set()
        self._wake.set()
        log.info("connected to %s:%d", self._broker.host, self._broker.port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if mid == self._barrier_mid and not self._heard_hub.is_set():
            self._heard_hub.set()
            self.publish_status()  # now in the revision the hub reads
            self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        if not self._closed:
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason)

    def _on_ack(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            ack = decode_message(bytes(message.payload), Ack)
        except Refusal as exc:
            log.error("unreadable ack on %s: %s", message.topic, exc.reason)
            return
        if ack.unit_id != self.unit_id:
            log.error("ack for unit %s arrived on %s's topic; ignored", ack.unit_id, self.unit_id)
            return
        with self._lock:
            flight = self._in_flight.get(ack.batch_id)
        verdicts = read_answer(ack, flight.scan_ids if flight is not None else ())
        try:
            now = self._clock.now()
            self._outbox.settle(verdicts.stored, now)
            if verdicts.final:
                self._outbox.quarantine(verdicts.final, now)
        except Exception:
            # They stay pending, and are sent again later.
            log.exception(
                "could not settle the answer to batch %s; it will be resent", ack.batch_id
            )
            return
        self._on_hub_time(ack.hub_time)
        with self._lock:
            delay = self._deferrals.defer(verdicts.later, self._clock.monotonic())
            self._in_flight.pop(ack.batch_id, None)
            self.acks_received += 1
        if delay is not None:
            log.warning(
                "%d scans the hub cannot take now: sent again in %.0f s", len(verdicts.later), delay
            )
        if verdicts.final:
            self.publish_status()  # the quarantined count moved
        self._wake.set()

    def _on_hub_status(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        try:
            status = decode_message(bytes(message.payload), HubStatus)
        except Refusal as exc:
            log.warning("unreadable hub status: %s", exc.reason)
            return
        with self._lock:
            if status.revision is not None:
                self._hub_revision = status.revision
                self._hub_too_old_logged = False

    def _batch_revision(self) -> int | None:
        """The ``rev`` to write: the hub's announced revision, at most ours (None: older)."""
        with self._lock:
            hub = self._hub_revision
        if hub is None or hub < REV_FIELD_SINCE:
            return None
        return min(hub, WIRE_REVISION)

    def _on_config(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._on_config_payload is not None
        try:
            changed = self._on_config_payload(bytes(message.payload))
        except Exception:
            log.exception("handling the remote config failed; the current config stays")
            return
        if changed:
            self.publish_status()

    def _on_revocations(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        assert self._on_revocations_payload is not None
        try:
            self._on_revocations_payload(bytes(message.payload))
        except Exception:
            log.exception("handling the card revocation list failed; the held one stays")

    # -- the sender thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(1.0, self._cfg.ack_timeout_s / 2))
            self._wake.clear()
            if self._stop.is_set() or not self._connected.is_set():
                continue
            try:
                self._status_if_due()
            except Exception:
                log.exception("publishing the unit's status failed; trying again shortly")
            try:
                self._expire_in_flight()
                while self._send_one_batch():
                    pass
            except Exception:
                # A journal read error must not kill the sender; it is tried again shortly.
                log.exception("sending the backlog failed; retrying")

    def _expire_in_flight(self) -> None:
        now = self._clock.monotonic()
        with self._lock:
            for batch_id, flight in list(self._in_flight.items()):
                if now - flight.sent_at >= self._cfg.ack_timeout_s:
                    log.warning(
                        "no ack for batch %s after %.0f s; resending",
                        batch_id,
                        now - flight.sent_at,
                    )
                    del self._in_flight[batch_id]

    def _send_one_batch(self) -> bool:
        waited = self._clock.monotonic() - self._connected_at
        if not self._heard_hub.is_set() and waited < HUB_STATUS_WAIT_S:
            return False  # the hub's retained status is on its way (see _on_connect)
        with self._lock:
            if len(self._in_flight) >= self._cfg.max_in_flight:
                return False
            skip = self._deferrals.waiting(self._clock.monotonic()).union(
                *(f.scan_ids for f in self._in_flight.values())
            )
        scans = self._outbox.pending(self._cfg.batch_size, skip=skip)
        if not scans or not self._connected.is_set():
            return False
        batch = ScanBatch(
            batch_id=uuid.uuid4().hex,
            unit_id=self.unit_id,
            sent_at=self._wall(),
            scans=scans,
            # Lets the hub date scans taken with an untrusted clock (see device.clock).
            boot_id=BOOT_ID,
            sent_mono_ms=int(self._clock.monotonic() * 1000),
            rev=self._batch_revision(),
        )
        hub, needed = self._hub_revision, revision_of(batch)
        if hub is not None and needed > hub:
            # The hub announced a revision that cannot read these scans: wait for its upgrade.
            if not self._hub_too_old_logged:
                self._hub_too_old_logged = True
                log.error(
                    "the hub reads revision %d, these scans need %d; they wait for the hub",
                    hub,
                    needed,
                )
            return False
        info = self._client.publish(topic_scans(self.unit_id), encode_message(batch), qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning(
                "publish of batch %s failed (%s); it stays in the journal", batch.batch_id, info.rc
            )
            return False
        with self._lock:
            self._in_flight[batch.batch_id] = _InFlight(
                frozenset(s.scan_id for s in scans), self._clock.monotonic()
            )
            self.batches_sent += 1
        return True

    def publish_status(self) -> mqtt.MQTTMessageInfo:
        """Publish the retained status with the current health figures (thread-safe)."""
        health = self._safe_health()
        info = self._client.publish(
            topic_status(self.unit_id), self._status(online=True, health=health), qos=1, retain=True
        )
        with self._lock:
            self._last_status = info
            self._status_sent_at = self._clock.monotonic()
            self._status_key = tuple(health.get(name) for name in STATUS_CHANGE_FIELDS)
            self.statuses_sent += 1
        return info

    def status_acknowledged(self) -> bool:
        """Has the broker acknowledged (PUBACK) a status of this unit since it started?"""
        with self._lock:
            if not self._status_acked and self._last_status is not None:
                self._status_acked = self._last_status.is_published()
            return self._status_acked

    def _status_if_due(self) -> None:
        health = self._safe_health()
        key = tuple(health.get(name) for name in STATUS_CHANGE_FIELDS)
        with self._lock:
            due = (
                self._status_sent_at is None
                or self._clock.monotonic() - self._status_sent_at >= self._status_every_s
                or key != self._status_key
            )
        if due:
            self.publish_status()

    def _safe_health(self) -> dict[str, Any]:
        try:
            return dict(self._health())
        except Exception:
            # A broken figure must not silence the status itself.
            log.exception("gathering the unit's health figures failed")
            return {}

    def _status(self, *, online: bool, health: Mapping[str, Any] | None = None) -> bytes:
        backlog: int | None
        quarantined: int | None
        try:
            backlog = self._outbox.backlog()
            quarantined = self._outbox.quarantine_count()
        except Exception:
            backlog = quarantined = None
        status = UnitStatus(
            unit_id=self.unit_id,
            online=online,
            at=self._wall(),
            software=__version__,
            backlog=backlog,
            last_scan_at=self._last_scan_at(),
            quarantined=quarantined,
            **(health or {}),
        )
        return encode_message(self._readable_by_hub(status))

    def _readable_by_hub(self, status: UnitStatus) -> UnitStatus:
        """The status without the fields a hub of an older revision would refuse it for
        (without an announced revision: as revision 5, the last without announcements)."""
        hub = self._hub_revision
        return written_for(status, REV_FIELD_SINCE - 1 if hub is None else hub)
