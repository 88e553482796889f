"""Publish the registry to the hub: one retained QoS 1 message per venue and unit.

The hub learns venues and units from retained messages on
``doorscan/v1/registry/{venues|units}/{id}`` (`doorscan.wire`, docs/wire.md). The broker
keeps the last message of each topic and gives it to every new subscriber, so a hub
that starts later, or starts over with an empty store, still learns the whole fleet.

Nothing here is fire-and-forget. A message counts as published only when the broker's
PUBACK for it has arrived (`MQTTMessageInfo.wait_for_publish`) and says success: the
client speaks MQTT 5 because there a broker that will not take a message (an ACL that
denies the topic) says so in the PUBACK's reason code, where MQTT 3.1.1 acknowledges
and silently drops it. Any message not confirmed within `timeout_s` makes the whole
call fail with `PublishError` naming the topics. Publishing again is always safe: a
retained message simply replaces the previous one.

Against the fleet's TLS listener (`provisioning.broker_pki`) pass `tls=ClientTls(...)`
with the provisioning certificate `broker-files` wrote: the broker's ACL lets only that
name (doorscan-provisioning) write the registry, and refuses any other, a unit's
included, with a "Not authorized" PUBACK that ends up in the `PublishError`.

Not done here: a unit or venue removed from the registry keeps its retained message
until an empty retained payload clears it (there is no remove command yet).

Use::

    messages = registry_messages(registry.venues(), registry.units())
    publish_messages(messages, "hub.local", 1883, timeout_s=10)   # -> how many, or raises
    tls = ClientTls(Path("ca.pem"), Path("provisioning-cert.pem"), Path("provisioning-key.pem"))
    publish_messages(messages, "hub.local", 8883, tls=tls)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from doorscan.wire import (
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
)
from provisioning.fleet import ProvisioningError

__all__ = [
    "ClientFactory",
    "ClientTls",
    "Message",
    "PublishError",
    "paho_client_factory",
    "publish_messages",
    "registry_messages",
]

ClientFactory = Callable[[str], mqtt.Client]
KEEPALIVE_S = 30


def paho_client_factory(client_id: str) -> mqtt.Client:
    """The production client: paho 2.x, MQTT 5 (PUBACKs carry a reason code)."""
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )


class PublishError(ProvisioningError, ConnectionError):
    """The broker could not be reached, or did not confirm every registry message."""


@dataclass(frozen=True)
class ClientTls:
    """The files for a TLS connection with a client certificate (all PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Message:
    """One retained registry message, ready to send."""

    topic: str
    payload: bytes


def registry_messages(venues: Iterable[VenueRecord], units: Iterable[UnitRecord]) -> list[Message]:
    """Venues first, so a hub that reads them in order knows a unit's venue before the unit."""
    messages = [Message(topic_registry_venue(v.venue_id), encode_message(v)) for v in venues]
    messages += [Message(topic_registry_unit(u.unit_id), encode_message(u)) for u in units]
    return messages


class _Confirmations:
    """What the network thread learns: the CONNACK, a lost connection, refused PUBACKs."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.connected = False
        self.connect_problem = "no CONNACK"
        self._lock = threading.Lock()
        self._refused: dict[int, str] = {}

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.connect_problem = f"the broker refused the connection: {reason_code}"
        else:
            self.connected = True
        self.answered.set()

    def on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.answered.is_set():
            self.connect_problem = f"the broker closed the connection: {reason_code}"
            self.answered.set()

    def on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # paho calls this before it marks the message published, so a waiter that sees
        # is_published() also sees the reason recorded here.
        if reason_code.is_failure:
            with self._lock:
                self._refused[mid] = str(reason_code)

    def refusal(self, mid: int) -> str | None:
        with self._lock:
            return self._refused.get(mid)


def publish_messages(
    messages: Sequence[Message],
    host: str,
    port: int,
    *,
    timeout_s: float = 10.0,
    tls: ClientTls | None = None,
    client_factory: ClientFactory = paho_client_factory,
) -> int:
    """Send every message retained at QoS 1 and wait for each PUBACK; return how many.

    `timeout_s` bounds the TCP connect, the wait for CONNACK, and the wait for all the
    PUBACKs together. With `tls`, the connection is TLS 1.2+, the broker's certificate
    must be signed by `tls.ca_file` and name `host`, and the client shows `tls.cert_file`.
    Raises `PublishError` on any failure; the messages the broker did confirm stay
    retained (sending them again does no harm).
    """
    if not messages:
        return 0
    confirmations = _Confirmations()
    # A fresh client id each run: two technicians publishing at once must not kick
    # each other off the broker, and there is no session worth keeping.
    client = client_factory(f"doorscan-provisioning-{uuid.uuid4().hex[:12]}")
    client.on_connect = confirmations.on_connect
    client.on_disconnect = confirmations.on_disconnect
    client.on_publish = confirmations.on_publish
    client.connect_timeout = timeout_s
    where = f"{host}:{port}"
    if tls is not None:
        _use_tls(client, tls)
    try:
        try:
            client.connect(host, port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise PublishError(
                f"could not connect to the broker at {where}: {exc.strerror or exc}"
            ) from None
        client.loop_start()
        if not confirmations.answered.wait(timeout_s):
            raise PublishError(f"the broker at {where} did not answer within {timeout_s:g} s")
        if not confirmations.connected:
            raise PublishError(f"{where}: {confirmations.connect_problem}")
        return _send_and_confirm(client, confirmations, messages, where, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def _use_tls(client: mqtt.Client, tls: ClientTls) -> None:
    try:
        # paho's defaults (PROTOCOL_TLS_CLIENT, CERT_REQUIRED) check the chain and the host
        # name; the broker certificate from `broker-files` names its hosts and 127.0.0.1.
        client.tls_set(
            ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file)
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a mismatched key
        raise PublishError(
            f"cannot use the TLS files {tls.ca_file}, {tls.cert_file}, {tls.key_file}: {exc}"
        ) from None


def _send_and_confirm(
    client: mqtt.Client,
    confirmations: _Confirmations,
    messages: Sequence[Message],
    where: str,
    timeout_s: float,
) -> int:
    # Send everything first, then wait: the PUBACKs come back while later messages go out.
    sent: list[tuple[Message, mqtt.MQTTMessageInfo]] = []
    for message in messages:
        info = client.publish(message.topic, message.payload, qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise PublishError(f"{where}: could not send {message.topic}: {info.rc.name}")
        sent.append((message, info))
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    for message, info in sent:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            problems.append(f"{message.topic} ({exc})")
            continue
        if not info.is_published():
            problems.append(f"{message.topic} (no PUBACK within {timeout_s:g} s)")
        elif (refused := confirmations.refusal(info.mid)) is not None:
            problems.append(f"{message.topic} (refused: {refused})")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise PublishError(
            f"{where}: {len(problems)} of {len(sent)} messages not confirmed: {shown}"
        )
    return len(sent)
