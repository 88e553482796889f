"""`hub serve`: the MQTT side of the hub. Subscribe, ingest, ack after commit.

Three promises meet here:

* The hub's MQTT session is persistent (`clean_session=False`, a fixed client id),
  so scans published while the hub is down wait for it in the broker.
* Incoming messages are acknowledged to the broker by hand (paho's `manual_ack`),
  after the store committed them. If the hub dies between receiving and committing,
  the broker still owes the message and delivers it again on reconnect.
* Every message is settled (PUBACKed): the ingestor stores it, refuses it or keeps it
  as a dead letter, whatever it holds. Only a store failure withholds the PUBACK; the
  message is then tried again here, with backoff, and after `MAX_DELIVERY_ATTEMPTS`
  failures while the store took other messages meanwhile, it is the message's fault:
  it is dead-lettered as ``poison`` and settled. A message that is never settled
  would hold one of the broker's in-flight slots for the hub, and a few of them stop
  the whole fleet's ingest (Mosquitto sends a client at most ``max_inflight_messages``
  unacknowledged messages). The one exception: a hub whose keys do not match the
  fleet's (`hub.keycheck`) leaves scan batches unsettled while it stops, so that they
  are delivered again to a hub that can open them instead of being dead-lettered.

Registry topics are subscribed before scan topics: the broker sends retained
registry messages as it handles each SUBSCRIBE, so after a restart the hub knows
every unit before the first queued scan arrives.

Several workers (`hub.workers`, ``serve --workers N``) each run one `HubService`
with ``shared_group`` set: scans then come through the shared subscription
`shared_scans_topic` and the broker hands each batch to one worker of the group.
Such a worker's session is clean (`worker_client_factory`), on purpose: see
`hub.workers` for what the broker does with a dead worker's messages.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from doorscan import __version__
from doorscan.mqtt import (
    ClientFactory,
    ConfirmedPublisher,
    PublishNotConfirmed,
    TlsFiles,
    make_client,
    use_tls,
)
from doorscan.wire import (
    SUB_ALL_SCANS,
    SUB_ALL_STATUS,
    SUB_REGISTRY,
    WIRE_REVISION,
    HubStatus,
    encode_message,
    topic_hub_status,
)
from doorscan.wire.limits import BROKER_MAX_INFLIGHT, MAX_DELIVERY_ATTEMPTS
from hub.ingest import Delivery, Ingestor, KeysMismatch, Reply

__all__ = [
    "SHARED_GROUP",
    "HubService",
    "hub_client_factory",
    "shared_scans_topic",
    "worker_client_factory",
]

log = logging.getLogger(__name__)


SHARED_GROUP = "doorscan-hub"
"""The share name the hub's workers use: one group, so each batch goes to one worker."""
GROUP_MAX = BROKER_MAX_INFLIGHT
"""Deliveries settled with one commit at most: no more can be waiting unacked."""


def shared_scans_topic(group: str = SHARED_GROUP) -> str:
    """Every unit's scans as a shared subscription (MQTT 5 ``$share``; Mosquitto takes
    it from MQTT 3.1.1 clients too): ``$share/doorscan-hub/doorscan/v1/units/+/scans``."""
    return f"$share/{group}/{SUB_ALL_SCANS}"


def hub_client_factory(client_id: str) -> mqtt.Client:
    """The production client: persistent session, messages acked by hand after commit."""
    return make_client(client_id, persistent=True, manual_ack=True)


def worker_client_factory(client_id: str) -> mqtt.Client:
    """One worker of several: a clean session, messages still acked by hand after commit.

    Clean, because Mosquitto keeps a disconnected persistent session in the share
    group and keeps handing it batches; a clean one leaves the group when it dies.
    """
    return make_client(client_id, persistent=False, manual_ack=True)


class HubService:
    """Connects an `Ingestor` to a broker."""

    def __init__(
        self,
        ingestor: Ingestor,
        host: str,
        port: int,
        *,
        client_id: str = "doorscan-hub",
        client_factory: ClientFactory = hub_client_factory,
        keepalive_s: int = 30,
        tls: TlsFiles | None = None,
        shared_group: str | None = None,
        max_attempts: int = MAX_DELIVERY_ATTEMPTS,
        retry_delays_s: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0),
    ) -> None:
        """`shared_group`: take scans through that share group (one worker of several).

        A message the store failed on is tried again after each of `retry_delays_s` in
        turn (the last one repeating), and given up as poison after `max_attempts`.
        """
        self.ingestor = ingestor
        self._scans_topic = (
            SUB_ALL_SCANS if shared_group is None else shared_scans_topic(shared_group)
        )
        self._host = host
        self._port = port
        self._keepalive_s = keepalive_s
        self._client = client_factory(client_id)
        if tls is not None:
            # The broker knows the hub by its certificate's CN (doorscan-hub), not client_id.
            use_tls(self._client, tls)
        self._shared = shared_group is not None
        if not self._shared:
            # One hub: the broker says it is gone if it vanishes. A worker of several sets
            # no will: one worker's death is not the hub's.
            self._client.will_set(topic_hub_status(), _hub_status(False), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._scans_mid: int | None = None
        self._client.reconnect_delay_set(1, 30)
        self._connected = threading.Event()
        self._closed = False
        self._max_attempts = max_attempts
        self._retry_delays_s = tuple(retry_delays_s)
        # One message at a time: the MQTT thread and the retry thread both settle.
        self._handling = threading.Lock()
        self._stored: Counter[str] = Counter()
        self._failed: OrderedDict[bytes, _Failures] = OrderedDict()
        self._retries = _RetryQueue(self._retry_due)
        # Messages go from the MQTT thread to one ingest thread, which takes whatever has
        # queued up as one group: one commit for all of it (`Ingestor.handle_group`).
        self._inbox: queue.SimpleQueue[_Inbox] = queue.SimpleQueue()
        # A delivery's packet id means something only on the connection it came on.
        self._connection = 0
        self._ingest_thread = threading.Thread(
            target=self._ingest_loop, name="hub-ingest", daemon=True
        )
        self.acks_sent = 0
        self.failures = 0

    def start(self) -> HubService:
        if self._ingest_thread.ident is None:  # `with` after start() starts it once
            self._ingest_thread.start()
        self._client.connect_async(self._host, self._port, self._keepalive_s)
        self._client.loop_start()
        return self

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed to every unit's scans."""
        return self._connected.wait(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._retries.close()
        if self._connected.is_set() and not self._shared:
            # A clean disconnect does not fire the will: say it.
            try:
                ConfirmedPublisher(self._client).publish(
                    topic_hub_status(), _hub_status(False), retain=True, timeout_s=2
                )
            except PublishNotConfirmed as exc:
                log.warning("the hub's offline status was not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        # What is still queued stays unacked: the broker delivers it again.
        self._inbox.put(None)
        if self._ingest_thread.is_alive():
            self._ingest_thread.join(30)

    def waiting(self) -> int:
        """Messages not acked because the store failed on them, waiting to be tried again."""
        return len(self._retries)

    def __enter__(self) -> HubService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the hub: %s", reason)
            return
        # Registry and status are never shared, even with several workers: they live
        # in retained messages, which a broker sends on a plain subscribe but not on a
        # $share one (MQTT 5, 4.8.2; Mosquitto from 2.0.13, ChangeLog), so a shared
        # registry would never reach a new hub's empty store. Handling them is an
        # idempotent upsert, so every worker taking every one of them is harmless.
        client.subscribe(SUB_REGISTRY, qos=1)
        # Each unit's retained status and last will, for the units page (hub.reports).
        client.subscribe(SUB_ALL_STATUS, qos=1)
        _, self._scans_mid = client.subscribe(self._scans_topic, qos=1)
        # The hub's "birth": units read from it which revision of the contract to write.
        client.publish(topic_hub_status(), _hub_status(True), qos=1, retain=True)
        log.info("hub connected to %s:%d", self._host, self._port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        # "Connected" means the broker has confirmed the scans subscription: from now on
        # no scan published by a unit can miss the hub.
        if mid == self._scans_mid:
            if any(r.is_failure for r in reasons):
                log.error("broker refused the scans subscription: %s", reasons)
                return
            # Set by the ingest thread once it has settled what came before.
            self._inbox.put(_Subscribed())

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        # The broker hands the unacknowledged messages again after the reconnect; their
        # old packet ids would ack other messages there (queued ones are left unacked).
        self._connection += 1
        self._retries.clear()
        if not self._closed:
            log.warning("hub lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((self._connection, message))

    def _retry_due(self, message: mqtt.MQTTMessage) -> None:
        if self._connected.is_set() and not self._closed:
            self._settle(message, self._connection)

    def _ingest_loop(self) -> None:
        """Take what has queued (at most `GROUP_MAX`), settle it, repeat until `close`.

        No message waits for company: a group is what arrived while the last one was
        being stored, so under light load each message is its own group, and an ack
        never waits longer than one group's handling and commit.
        """
        while True:
            first = self._inbox.get()
            if first is None:
                return
            group: list[tuple[int, mqtt.MQTTMessage]] = []
            stop = ready = False
            item: _Inbox = first
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, _Subscribed):
                    ready = True  # what came before it is settled first, below
                else:
                    group.append(item)
                if stop or ready or len(group) >= GROUP_MAX:
                    break
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            try:
                if len(group) == 1:
                    self._settle(group[0][1], group[0][0])
                elif group:
                    self._settle_group(group)
            except Exception:  # this thread must outlive any message
                log.exception("settling %d messages failed; they stay unacked", len(group))
            if ready:
                # Every retained registry record the broker sent before confirming the
                # scans subscription is now stored: only then is the hub "connected".
                self._connected.set()
            if stop:
                return

    def _settle_group(self, group: list[tuple[int, mqtt.MQTTMessage]]) -> None:
        """Handle several deliveries with one commit, then PUBACK each (`_settle` alike).

        A delivery the group could not settle (the store failed) goes through `_settle`
        alone, which retries it or, if it alone fails, keeps it as poison.
        """
        deliveries = [Delivery(m.topic, bytes(m.payload), bool(m.retain), m.qos) for _, m in group]
        answers: list[list[Reply] | None]
        with self._handling:
            try:
                answers = self.ingestor.handle_group(deliveries)
            except KeysMismatch:
                return  # left unacked, as `_settle` leaves them
            except Exception:
                log.exception("handling %d messages together failed; one by one", len(group))
                answers = [None] * len(group)
            for delivery, replies in zip(deliveries, answers, strict=True):
                if replies is not None:
                    self._stored[_kind(delivery.topic)] += 1
                    self._failed.pop(_key(delivery.topic, delivery.payload), None)
        alone = []
        for (connection, message), replies in zip(group, answers, strict=True):
            if replies is None:
                alone.append((connection, message))
            else:
                self._answer(message, replies, connection)
        for connection, message in alone:
            self._settle(message, connection)

    def _settle(self, message: mqtt.MQTTMessage, connection: int) -> None:
        """Handle one delivery and PUBACK it; on a store failure, try it again later."""
        payload = bytes(message.payload)
        with self._handling:
            try:
                replies = self.ingestor.handle(
                    message.topic, payload, retained=bool(message.retain), qos=message.qos
                )
            except KeysMismatch:
                # Left unacked on purpose: the hub is stopping (serve's on_key_mismatch),
                # and the broker delivers the batch again to a hub that can open it.
                return
            except Exception as exc:
                self.failures += 1
                given_up = self._after_failure(message, payload, exc)
                if given_up is None:
                    return
                replies = given_up
            else:
                self._stored[_kind(message.topic)] += 1
                self._failed.pop(_key(message.topic, payload), None)
        self._answer(message, replies, connection)

    def _answer(self, message: mqtt.MQTTMessage, replies: list[Reply], connection: int) -> None:
        """Publish a settled delivery's replies, then PUBACK it on the connection it came on."""
        for reply in replies:
            self._client.publish(reply.topic, reply.payload, qos=1, retain=reply.retain)
            self.acks_sent += 1
        if connection == self._connection:
            self._client.ack(message.mid, message.qos)

    def _after_failure(
        self, message: mqtt.MQTTMessage, payload: bytes, exc: Exception
    ) -> list[Reply] | None:
        """The replies of a message given up as poison, or None: it waits for a retry."""
        key = _key(message.topic, payload)
        kind = _kind(message.topic)
        failures = self._failed.setdefault(key, _Failures(0, self._stored[kind]))
        self._failed.move_to_end(key)
        while len(self._failed) > _MAX_TRACKED:
            self._failed.popitem(last=False)
        failures.attempts += 1
        # Poison only if the store took other messages of its kind (scan batches, statuses,
        # registry records) since this one first failed: a store that is down, or cannot
        # write one table, fails them all, and then every message simply waits.
        stored_since = self._stored[kind] > failures.stored_before
        if failures.attempts >= self._max_attempts and stored_since:
            try:
                replies = self.ingestor.poison(message.topic, payload, failures.attempts, str(exc))
            except Exception:
                log.exception("could not keep a poison message on %s; it waits", message.topic)
            else:
                log.error(
                    "a message on %s failed %d times while others were stored: kept as poison",
                    message.topic,
                    failures.attempts,
                )
                self._failed.pop(key, None)
                return replies
        delay = self._retry_delays_s[min(failures.attempts, len(self._retry_delays_s)) - 1]
        log.warning(
            "could not store a message on %s (attempt %d: %s); not acked, trying again in %g s",
            message.topic,
            failures.attempts,
            exc,
            delay,
        )
        self._retries.put(message, delay)
        return None


def _hub_status(online: bool) -> bytes:
    return encode_message(
        HubStatus(
            online=online,
            revision=WIRE_REVISION,
            software=__version__,
            at=datetime.now(UTC) if online else None,
        )
    )


class _Subscribed:
    """Queued when the broker confirmed the scans subscription (see `_ingest_loop`)."""


_Inbox = tuple[int, mqtt.MQTTMessage] | _Subscribed | None
"""What the MQTT thread hands the ingest thread: a delivery and the connection it came
on, the subscription's confirmation, or None: stop."""


@dataclass
class _Failures:
    attempts: int
    stored_before: int  # messages of its kind stored when this one first failed


def _kind(topic: str) -> str:
    """``scans``, ``status``, ``registry``...: messages that the store writes alike."""
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 and parts[2] != "units" else parts[-1]


_MAX_TRACKED = 10_000
"""Messages whose failures are counted at once; the oldest are forgotten beyond this."""


def _key(topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(topic.encode("utf-8") + b"\0" + payload).digest()


class _RetryQueue:
    """Calls `due(message)` for each message put, after its delay, on one thread of its own.

    `clear()` forgets every waiting message: after a reconnect the broker delivers the
    unacknowledged ones again (a persistent session), and their old packet ids are void.
    """

    def __init__(self, due: Callable[[mqtt.MQTTMessage], None]) -> None:
        self._due = due
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, mqtt.MQTTMessage]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hub-retries", daemon=True)
        self._thread.start()

    def put(self, message: mqtt.MQTTMessage, delay_s: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), message))
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, message = heapq.heappop(self._heap)
            try:
                self._due(message)
            except Exception:
                log.exception("retrying a message failed")
