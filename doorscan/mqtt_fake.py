"""An in-memory MQTT broker and clients for fast tests, beside the real thing (`doorscan.mqtt`).

In the spirit of gpiozero's MockFactory: production code takes a `ClientFactory`;
a test passes `FakeBroker.client_factory` instead of a real one, and the broker records
every message published, in order, with the time it saw it, for the test to assert on:

    >>> broker = FakeBroker()
    >>> hub = broker.client_factory("hub")
    >>> got = []
    >>> hub.on_message = lambda client, userdata, message: got.append(message.payload)
    >>> _ = hub.connect("fake", 1883)
    >>> _ = hub.subscribe("doorscan/v1/units/+/scans", qos=1)
    >>> unit = broker.client_factory("door-1")
    >>> _ = unit.connect("fake", 1883)
    >>> _ = unit.publish("doorscan/v1/units/door-1/scans", b"{}", qos=1)
    >>> broker.settle()
    >>> got, [p.topic for p in broker.published]
    ([b'{}'], ['doorscan/v1/units/door-1/scans'])
    >>> broker.close()

What it models, as Mosquitto does (a contract test runs the same checks on both,
tests/test_mqtt_fake.py): topic wildcards, retained messages (delivered on subscribe
with the retain flag, an empty one clears), a last will on an unclean disconnect
(`drop`), shared subscriptions (``$share/group/...``: one member of the group each),
message order per publisher, callbacks on a thread of the broker's as paho calls them on
its network thread. What it does not: sessions across reconnects, QoS 2, in-flight
windows, redelivery of unacknowledged messages, sizes, ACLs, TLS (`tls_set` is recorded
and otherwise ignored). Use the real broker (`doorscan.localbroker`) to test those.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["FakeBroker", "FakeClient", "Published"]


@dataclass(frozen=True)
class Published:
    """One message as the broker received it; `at` is `time.monotonic()`."""

    at: float
    client_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class _Info:
    """What `publish` returns: paho's `MQTTMessageInfo` as far as doorscan uses it."""

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS

    def is_published(self) -> bool:
        return True

    def wait_for_publish(self, timeout: float | None = None) -> None:
        return None


@dataclass
class _Subscription:
    client: FakeClient
    pattern: str
    group: str | None


class FakeBroker:
    """The broker; `client_factory` makes its clients, `published` records every message."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.retained: dict[str, Published] = {}
        self._subs: list[_Subscription] = []
        self._turns: dict[str, itertools.count[int]] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="fake-broker", daemon=True)
        self._thread.start()

    def client_factory(self, client_id: str) -> mqtt.Client:
        """A `doorscan.mqtt.ClientFactory`: pass it where production takes one.

        The client is a `FakeClient`, typed as paho's for the code under test; a test that
        wants its extras (`drop`, `acked`) makes one with `fake_client`.
        """
        return cast(mqtt.Client, self.fake_client(client_id))

    def fake_client(self, client_id: str) -> FakeClient:
        return FakeClient(self, client_id)

    def settle(self, timeout_s: float = 5.0) -> None:
        """Wait until every message published so far has been delivered."""
        done = threading.Event()
        self._queue.put(done.set)
        if not done.wait(timeout_s):
            raise TimeoutError("the fake broker did not settle")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    # -- what clients call -----------------------------------------------------------------

    def _publish(
        self, sender: FakeClient, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        message = Published(time.monotonic(), sender.client_id, topic, bytes(payload), qos, retain)
        with self._lock:
            self.published.append(message)
            if retain:
                if payload:
                    self.retained[topic] = message
                else:
                    self.retained.pop(topic, None)
            targets = self._targets(topic)
        for client, granted in targets:
            # Forwarded live, a retained message loses its flag (MQTT 3.1.1, as Mosquitto).
            self._queue.put((client, message, min(qos, granted), False))

    def _subscribe(self, client: FakeClient, pattern: str, qos: int) -> None:
        group = None
        if pattern.startswith("$share/"):
            _, group, pattern = pattern.split("/", 2)
        with self._lock:
            self._subs = [s for s in self._subs if (s.client, s.pattern) != (client, pattern)]
            self._subs.append(_Subscription(client, pattern, group))
            client.granted[pattern] = qos
            retained = (
                []
                if group
                else [
                    m
                    for t, m in sorted(self.retained.items())
                    if mqtt.topic_matches_sub(pattern, t)
                ]
            )
        for message in retained:
            self._queue.put((client, message, min(message.qos, qos), True))

    def _forget(self, client: FakeClient) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s.client is not client]

    def _targets(self, topic: str) -> list[tuple[FakeClient, int]]:
        matching = [s for s in self._subs if mqtt.topic_matches_sub(s.pattern, topic)]
        chosen: dict[int, tuple[FakeClient, int]] = {}
        groups: dict[str, list[_Subscription]] = {}
        for sub in matching:
            if sub.group is None:
                chosen[id(sub.client)] = (sub.client, sub.client.granted[sub.pattern])
            else:
                groups.setdefault(sub.group, []).append(sub)
        for name, members in groups.items():
            turn = next(self._turns.setdefault(name, itertools.count()))
            sub = members[turn % len(members)]
            chosen.setdefault(id(sub.client), (sub.client, sub.client.granted[sub.pattern]))
        return list(chosen.values())

    def _deliver(self) -> None:
        mids = itertools.count(1)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if callable(item):
                item()
                continue
            client, message, qos, retained = item
            if client.connected:
                client._receive(message, qos, retained, next(mids))


@dataclass
class FakeClient:
    """A paho 2.x `Client`, as far as doorscan uses it, connected to a `FakeBroker`."""

    broker: FakeBroker
    client_id: str
    connected: bool = False
    granted: dict[str, int] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    tls: dict[str, Any] | None = None
    will: tuple[str, bytes, int, bool] | None = None
    on_connect: Any = None
    on_disconnect: Any = None
    on_message: Any = None
    on_subscribe: Any = None
    on_publish: Any = None
    connect_timeout: float = 5.0
    _pending_connect: tuple[str, int, int] | None = None
    _callbacks: dict[str, Any] = field(default_factory=dict)
    _mids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    __hash__ = object.__hash__

    # -- set-up, as paho has it -----------------------------------------------------------------

    def will_set(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.will = (topic, bytes(payload), qos, retain)

    def tls_set(self, **files: Any) -> None:
        self.tls = files

    def username_pw_set(self, username: str, password: str | None = None) -> None:
        return None

    def reconnect_delay_set(self, min_delay: int = 1, max_delay: int = 120) -> None:
        return None

    def message_callback_add(self, pattern: str, callback: Any) -> None:
        self._callbacks[pattern] = callback

    # -- the connection ----------------------------------------------------------------------

    def connect(self, host: str, port: int = 1883, keepalive: int = 60) -> MQTTErrorCode:
        self.connected = True
        if self.on_connect is not None:
            success = ReasonCode(PacketTypes.CONNACK, "Success")
            self.on_connect(self, None, mqtt.ConnectFlags(False), success, None)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def connect_async(self, host: str, port: int = 1883, keepalive: int = 60) -> None:
        # paho connects on its loop thread; the fake does it at loop_start.
        self._pending_connect = (host, port, keepalive)

    def loop_start(self) -> MQTTErrorCode:
        pending = self._pending_connect
        if pending is not None and not self.connected:
            self.broker._queue.put(lambda: self.connect(*pending))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_stop(self) -> MQTTErrorCode:
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def disconnect(self) -> MQTTErrorCode:
        """A clean disconnect: no last will."""
        self._gone(fire_will=False)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def drop(self) -> None:
        """The connection is lost (a power cut, a dead network): the broker sends the will."""
        self._gone(fire_will=True)

    def _gone(self, *, fire_will: bool) -> None:
        if not self.connected:
            return
        self.connected = False
        self.broker._forget(self)
        self.granted.clear()
        if fire_will and self.will is not None:
            topic, payload, qos, retain = self.will
            self.broker._publish(self, topic, payload, qos, retain)
        if self.on_disconnect is not None:
            reason = ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")
            self.broker._queue.put(
                lambda: self.on_disconnect(self, None, mqtt.DisconnectFlags(False), reason, None)
            )

    # -- messages ----------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False
    ) -> _Info:
        info = _Info(next(self._mids))
        if not self.connected:
            info.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
            return info
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self.broker._publish(self, topic, data, qos, retain)
        if self.on_publish is not None and qos > 0:
            success = ReasonCode(PacketTypes.PUBACK, "Success")
            self.broker._queue.put(lambda: self.on_publish(self, None, info.mid, success, None))
        return info

    def subscribe(self, topic: Any, qos: int = 0) -> tuple[MQTTErrorCode, int]:
        pairs = topic if isinstance(topic, list) else [(topic, qos)]
        mid = next(self._mids)
        for pattern, granted in pairs:
            self.broker._subscribe(self, pattern, granted)
        if self.on_subscribe is not None:
            codes = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1") for _ in pairs]
            self.broker._queue.put(lambda: self.on_subscribe(self, None, mid, codes, None))
        return MQTTErrorCode.MQTT_ERR_SUCCESS, mid

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """The PUBACK of a message received with ``manual_ack``: recorded."""
        if qos > 0:
            self.acked.append(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _receive(self, message: Published, qos: int, retained: bool, mid: int) -> None:
        delivered = mqtt.MQTTMessage(mid, message.topic.encode("utf-8"))
        delivered.payload = message.payload
        delivered.qos = qos
        delivered.retain = retained
        for pattern, callback in self._callbacks.items():
            if mqtt.topic_matches_sub(pattern, message.topic):
                callback(self, None, delivered)
                return
        if self.on_message is not None:
            self.on_message(self, None, delivered)
