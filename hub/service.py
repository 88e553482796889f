"""`hub serve`: the MQTT side of the hub. Subscribe, ingest, ack after commit.

Two promises meet here:

* The hub's MQTT session is persistent (`clean_session=False`, a fixed client id),
  so scans published while the hub is down wait for it in the broker.
* Incoming messages are acknowledged to the broker by hand (paho's `manual_ack`),
  after the store committed them. If the hub dies between receiving and committing,
  the broker still owes the message and delivers it again on reconnect.

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

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from doorscan.wire import SUB_ALL_SCANS, SUB_ALL_STATUS, SUB_REGISTRY
from hub.ingest import Ingestor

__all__ = [
    "SHARED_GROUP",
    "HubService",
    "TlsFiles",
    "hub_client_factory",
    "shared_scans_topic",
    "worker_client_factory",
]

log = logging.getLogger(__name__)

ClientFactory = Callable[[str], mqtt.Client]

SHARED_GROUP = "doorscan-hub"
"""The share name the hub's workers use: one group, so each batch goes to one worker."""


def shared_scans_topic(group: str = SHARED_GROUP) -> str:
    """Every unit's scans as a shared subscription (MQTT 5 ``$share``; Mosquitto takes
    it from MQTT 3.1.1 clients too): ``$share/doorscan-hub/doorscan/v1/units/+/scans``."""
    return f"$share/{group}/{SUB_ALL_SCANS}"


def hub_client_factory(client_id: str) -> mqtt.Client:
    """The production client: persistent session, messages acked by hand after commit."""
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
        manual_ack=True,
    )


def worker_client_factory(client_id: str) -> mqtt.Client:
    """One worker of several: a clean session, messages still acked by hand after commit.

    Clean, because Mosquitto keeps a disconnected persistent session in the share
    group and keeps handing it batches; a clean one leaves the group when it dies.
    """
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
        manual_ack=True,
    )


class TlsFiles(NamedTuple):
    """PEM files for a TLS connection with a client certificate (see provisioning.broker_pki)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


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
    ) -> None:
        """`shared_group`: take scans through that share group (one worker of several)."""
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
            self._client.tls_set(
                ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file)
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._scans_mid: int | None = None
        self._client.reconnect_delay_set(1, 30)
        self._connected = threading.Event()
        self._closed = False
        self.acks_sent = 0
        self.failures = 0

    def start(self) -> HubService:
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
        self._client.disconnect()
        self._client.loop_stop()

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
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        if not self._closed:
            log.warning("hub lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reply = self.ingestor.handle(message.topic, bytes(message.payload))
        except Exception:
            # Bad input never gets here (the ingestor dead-letters it); this is the store
            # failing. Do not ack: the broker redelivers, the unit resends.
            self.failures += 1
            log.exception("could not handle a message on %s; it is not acked", message.topic)
            return
        if reply is not None:
            client.publish(reply.topic, reply.payload, qos=1)
            self.acks_sent += 1
        client.ack(message.mid, message.qos)
