"""Publish the registry to the hub: one retained QoS 1 message per venue and unit, the
card revocation list and the fleet's public keys (`provisioning.fleet_keys`).

The hub learns venues and units from retained messages on
``doorscan/v1/registry/{venues|units}/{id}`` (`doorscan.wire`, docs/wire.md). The broker
keeps the last message of each topic and gives it to every new subscriber, so a hub
that starts later, or starts over with an empty store, still learns the whole fleet.

Nothing here is fire-and-forget. A message counts as published only when the broker's
PUBACK for it has arrived and says success (`doorscan.mqtt.ConfirmedPublisher`): the
client speaks MQTT 5 because there a broker that will not take a message (an ACL that
denies the topic) says so in the PUBACK's reason code, where MQTT 3.1.1 acknowledges
and silently drops it. Any message not confirmed within `timeout_s` makes the whole
call fail with `PublishError` naming the topics. Publishing again is always safe: a
retained message simply replaces the previous one.

Against the fleet's TLS listener (`provisioning.broker_pki`) pass `tls=TlsFiles(...)`
with the provisioning certificate `broker-files` wrote: the broker's ACL lets only that
name (doorscan-provisioning) write the registry, and refuses any other, a unit's
included, with a "Not authorized" PUBACK that ends up in the `PublishError`.

Not done here: a unit or venue removed from the registry keeps its retained message
until an empty retained payload clears it (there is no remove command yet).

Use::

    messages = registry_messages(registry.venues(), registry.units(), None, fleet_keys(home, now))
    publish_messages(messages, "hub.local", 1883, timeout_s=10)   # -> how many, or raises
    tls = TlsFiles(Path("ca.pem"), Path("provisioning-cert.pem"), Path("provisioning-key.pem"))
    publish_messages(messages, "hub.local", 8883, tls=tls)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from doorscan.mqtt import (
    MQTT_5,
    ClientFactory,
    ConfirmedPublisher,
    PublishNotConfirmed,
    TlsFiles,
    TlsFilesError,
    fresh_client_id,
    make_client,
    use_tls,
)
from doorscan.wire import (
    CardRevocations,
    FleetKeys,
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_card_revocations,
    topic_fleet_keys,
    topic_registry_unit,
    topic_registry_venue,
)
from provisioning.fleet import ProvisioningError

__all__ = [
    "KEEPALIVE_S",
    "Message",
    "PublishError",
    "provisioning_client_factory",
    "publish_messages",
    "registry_messages",
]

KEEPALIVE_S = 30


def provisioning_client_factory(client_id: str) -> mqtt.Client:
    """The production client: MQTT 5 (PUBACKs carry a reason code), no session kept."""
    return make_client(client_id, protocol=MQTT_5)


class PublishError(ProvisioningError, ConnectionError):
    """The broker could not be reached, or did not confirm every registry message."""


@dataclass(frozen=True)
class Message:
    """One retained registry message, ready to send."""

    topic: str
    payload: bytes


def registry_messages(
    venues: Iterable[VenueRecord],
    units: Iterable[UnitRecord],
    revocations: CardRevocations | None = None,
    fleet_keys: FleetKeys | None = None,
) -> list[Message]:
    """Venues first, so a hub that reads them in order knows a unit's venue before the unit;
    then the card revocation list and the fleet's public keys, when given."""
    messages = [Message(topic_registry_venue(v.venue_id), encode_message(v)) for v in venues]
    messages += [Message(topic_registry_unit(u.unit_id), encode_message(u)) for u in units]
    if revocations is not None:
        messages.append(Message(topic_card_revocations(), encode_message(revocations)))
    if fleet_keys is not None:
        messages.append(Message(topic_fleet_keys(), encode_message(fleet_keys)))
    return messages


class _Connection:
    """What the network thread learns: the CONNACK, or a connection lost before it."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.connected = False
        self.problem = "no CONNACK"

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.problem = f"the broker refused the connection: {reason}"
        else:
            self.connected = True
        self.answered.set()

    def on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self.answered.is_set():
            self.problem = f"the broker closed the connection: {reason}"
            self.answered.set()


def publish_messages(
    messages: Sequence[Message],
    host: str,
    port: int,
    *,
    timeout_s: float = 10.0,
    tls: TlsFiles | None = None,
    client_factory: ClientFactory = provisioning_client_factory,
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
    connection = _Connection()
    # A fresh client id each run: two technicians publishing at once must not kick
    # each other off the broker, and there is no session worth keeping.
    client = client_factory(fresh_client_id("doorscan-provisioning"))
    client.on_connect = connection.on_connect
    client.on_disconnect = connection.on_disconnect
    publisher = ConfirmedPublisher(client)
    client.connect_timeout = timeout_s
    where = f"{host}:{port}"
    if tls is not None:
        try:
            use_tls(client, tls)
        except TlsFilesError as exc:
            raise PublishError(str(exc)) from None
    try:
        try:
            client.connect(host, port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise PublishError(
                f"could not connect to the broker at {where}: {exc.strerror or exc}"
            ) from None
        client.loop_start()
        if not connection.answered.wait(timeout_s):
            raise PublishError(f"the broker at {where} did not answer within {timeout_s:g} s")
        if not connection.connected:
            raise PublishError(f"{where}: {connection.problem}")
        return _send_and_confirm(publisher, messages, where, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def _send_and_confirm(
    publisher: ConfirmedPublisher, messages: Sequence[Message], where: str, timeout_s: float
) -> int:
    # Send everything first, then wait: the PUBACKs come back while later messages go out.
    try:
        sent = [(m, publisher.send(m.topic, m.payload, retain=True)) for m in messages]
    except PublishNotConfirmed as exc:
        raise PublishError(f"{where}: {exc}") from None
    deadline = time.monotonic() + timeout_s
    problems = [
        f"{message.topic} ({problem})"
        for message, info in sent
        if (problem := publisher.confirm(info, deadline - time.monotonic())) is not None
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise PublishError(
            f"{where}: {len(problems)} of {len(sent)} messages not confirmed: {shown}"
        )
    return len(sent)
