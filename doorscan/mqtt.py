"""MQTT for every doorscan process: one way to make a client, give it TLS, and publish confirmed.

The door unit, the hub, provisioning and their tools all build their paho client here, so
the MQTT profile of each party (docs/wire.md) is written once:

    >>> unit = make_client("door-1", persistent=True)
    >>> hub = make_client("doorscan-hub", persistent=True, manual_ack=True)
    >>> tool = make_client(fresh_client_id("doorscan-provisioning"), protocol=MQTT_5)
    >>> use_tls(tool, TlsFiles(ca, cert, key))                      # doctest: +SKIP
    >>> ConfirmedPublisher(tool).publish(topic, b"{}", timeout_s=10)  # doctest: +SKIP

Every room that connects takes a `ClientFactory` (a client id -> a client), with the real
one by default; tests pass `doorscan.mqtt_fake.FakeBroker.client_factory`, an in-memory
broker that records what was published, as gpiozero's MockFactory stands in for pins.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from doorscan.errors import ConfigError, DoorscanError

__all__ = [
    "MQTT_311",
    "MQTT_5",
    "ClientFactory",
    "ConfirmedPublisher",
    "PublishNotConfirmed",
    "TlsFiles",
    "TlsFilesError",
    "fresh_client_id",
    "make_client",
    "use_credentials",
    "use_tls",
]

MQTT_311 = mqtt.MQTTv311
MQTT_5 = mqtt.MQTTv5

ClientFactory = Callable[[str], mqtt.Client]
"""A client id -> a client: the real `make_client`, or a test's fake."""


class TlsFiles(NamedTuple):
    """PEM files for a TLS connection; with a client certificate the broker knows who it is."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class TlsFilesError(ConfigError):
    """TLS files that cannot be read or do not match (a key that is not the cert's)."""


class PublishNotConfirmed(DoorscanError, ConnectionError):
    """The broker did not confirm a publish in time, or refused it (an ACL, on MQTT 5)."""


def make_client(
    client_id: str,
    *,
    persistent: bool = False,
    protocol: int = MQTT_311,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho 2.x client (callbacks of API version 2).

    `persistent`: the broker keeps the session (subscriptions, queued QoS 1 messages)
    while the client is away; MQTT 3.1.1 only here, as every persistent party is.
    `manual_ack`: the caller sends each PUBACK itself (`client.ack`), after it has kept
    the message (the hub, after its commit).
    """
    if protocol == MQTT_5:
        if persistent:
            raise ValueError("a persistent MQTT 5 session needs a session expiry: use 3.1.1")
        return mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTT_5,
            manual_ack=manual_ack,
        )
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=MQTT_311,
        manual_ack=manual_ack,
    )


def fresh_client_id(prefix: str) -> str:
    """A client id for a one-off connection: it never takes over a running party's session."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def use_tls(client: mqtt.Client, tls: TlsFiles) -> None:
    """TLS 1.2+ checking the broker's certificate against `tls.ca_file` and its host name.

    paho's defaults (PROTOCOL_TLS_CLIENT, CERT_REQUIRED) do both; with a client
    certificate, the broker takes its CN as the user (and client id) and applies the ACL.
    """
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file),
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a mismatched key
        files = ", ".join(str(p) for p in tls if p is not None)
        raise TlsFilesError(f"cannot use the TLS files {files}: {exc}") from None


def use_credentials(client: mqtt.Client, username: str, password_file: Path | None) -> None:
    """A user name and the password read from a file (never from a config or a flag)."""
    password = password_file.read_text(encoding="utf-8").strip() if password_file else None
    client.username_pw_set(username, password)


class ConfirmedPublisher:
    """Publishes and waits for the broker's PUBACK; an MQTT 5 refusal is an error too.

    It takes over the client's ``on_publish``. `send` many, then `confirm` each: the
    PUBACKs come back while later messages go out.
    """

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._refused: dict[int, str] = {}
        client.on_publish = self._on_publish

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        # paho calls this before it marks the message published, so a waiter that sees
        # is_published() also sees the refusal recorded here.
        if reason.is_failure:
            with self._lock:
                self._refused[mid] = str(reason)

    def send(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise PublishNotConfirmed(f"could not send {topic}: {info.rc.name}")
        return info

    def confirm(self, info: mqtt.MQTTMessageInfo, timeout_s: float) -> str | None:
        """Why the message was not confirmed within `timeout_s`, or None once it was."""
        try:
            info.wait_for_publish(max(0.0, timeout_s))
        except (RuntimeError, ValueError) as exc:
            return str(exc)
        if not info.is_published():
            return f"no PUBACK within {timeout_s:g} s"
        with self._lock:
            refused = self._refused.get(info.mid)
        return None if refused is None else f"refused: {refused}"

    def publish(
        self, topic: str, payload: bytes, *, timeout_s: float, qos: int = 1, retain: bool = False
    ) -> None:
        """Send and confirm one message; raise `PublishNotConfirmed` with the reason."""
        started = time.monotonic()
        info = self.send(topic, payload, qos=qos, retain=retain)
        problem = self.confirm(info, timeout_s - (time.monotonic() - started))
        if problem is not None:
            raise PublishNotConfirmed(f"{topic}: {problem}")
