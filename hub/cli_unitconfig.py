"""`unit-config`: set a door unit's remote config (debounce, buzzer, frame rate, quiet hours).

    doorscan-hub unit-config door-1 debounce_s=120 quiet_hours=22:00-06:00
    doorscan-hub unit-config door-1 feedback_volume=        # unset: the unit's own file decides
    doorscan-hub unit-config door-1 --show                  # published and applied versions

The config is one retained `doorscan.wire.UnitConfigUpdate` on the unit's config topic.
The command reads the one retained now (and the unit's retained status), merges the
given keys into it, checks the result with the same model and strict decoding the unit
uses, and publishes it retained at QoS 1 with the version one above both the retained
one and the one the unit reports applied (a unit ignores a version it has passed).
An unknown key or a bad value is an error (exit 2) and nothing is published. With
``--wait-applied S`` it then waits for the unit's status: exit 0 once the unit reports the
new version, 1 if it refused it or said nothing within S seconds.

It talks to the broker only: it does not open the hub's store, so it writes nothing to
the audit log (that log records identity reads). The record of a change is the retained
message itself (version, issued_at) and the unit's status (config_version, config_error).
Only the hub's certificate may write config topics (the broker ACL), so on a TLS
broker give the hub's files, as for `serve`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import ValidationError

from doorscan.errors import Refusal
from doorscan.wire import (
    CONFIG_SETTINGS,
    ID_PATTERN,
    UnitConfigUpdate,
    UnitStatus,
    decode_message,
    encode_message,
    topic_config,
    topic_scans,
    topic_status,
)
from hub.cli_common import Commands, UsageError, broker_parent, tls_files

__all__ = ["add_unit_config", "parse_settings"]

EXIT_NOT_APPLIED = 1


def add_unit_config(commands: Commands) -> None:
    parser = commands.add_parser(
        "unit-config",
        parents=[broker_parent()],
        help="set or show a door unit's remote config (retained on its config topic)",
        description="Keys: " + ", ".join(CONFIG_SETTINGS) + ". KEY= (empty) unsets a key.",
    )
    parser.add_argument("unit", help="the unit's id")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings to change")
    parser.add_argument("--show", action="store_true", help="print the current config and stop")
    parser.add_argument(
        "--wait-applied",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the unit to report the new version (exit 1 if not)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=10.0, help="give up on the broker after this (s)"
    )
    parser.set_defaults(run=_run_unit_config)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["debounce_s=120", "quiet_hours="]`` -> {"debounce_s": 120, "quiet_hours": None}.

    A value is read as JSON when it is JSON (numbers), else taken as text; an empty
    value unsets the key. Unknown keys are a `UsageError` naming them.
    """
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r} is not KEY=VALUE")
        if key not in CONFIG_SETTINGS:
            raise UsageError(f"unknown key {key!r}; the keys are {', '.join(CONFIG_SETTINGS)}")
        if key in settings:
            raise UsageError(f"{key} is given twice")
        if text == "":
            settings[key] = None
            continue
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        settings[key] = value if isinstance(value, int | float | str) else text
    return settings


def _build(unit_id: str, version: int, settings: dict[str, Any]) -> UnitConfigUpdate:
    """The message, checked the way the unit will check it (strict JSON decoding)."""
    data = {"unit_id": unit_id, "version": version, "issued_at": datetime.now(UTC)}
    data.update({k: v for k, v in settings.items() if v is not None})
    try:
        message = UnitConfigUpdate.model_validate(data, strict=True)
        return decode_message(encode_message(message), UnitConfigUpdate)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise UsageError(f"refused, nothing published: {problems}") from None
    except Refusal as exc:
        raise UsageError(f"refused, nothing published: {exc.reason}") from None


class _Link:
    """One short MQTT v5 connection (PUBACKs carry the broker's reason, e.g. an ACL no)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.host: str = args.broker_host
        self.port: int = args.broker_port
        self.where = f"{self.host}:{self.port}"
        self.timeout_s: float = args.timeout_s
        # A fresh id: the running hub's session (client id doorscan-hub) must not be kicked.
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"doorscan-hub-config-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        self._cond = threading.Condition()
        self.connected: bool | None = None
        self.problem = "no answer"
        self.messages: dict[str, bytes] = {}
        self.subacks: set[int] = set()
        self.refused: dict[int, str] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        tls = tls_files(args)
        if tls is not None:
            try:
                self.client.tls_set(
                    ca_certs=str(tls.ca_file),
                    certfile=str(tls.cert_file),
                    keyfile=str(tls.key_file),
                )
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot use the TLS files: {exc}") from None
        self.client.connect_timeout = self.timeout_s

    def open(self) -> None:
        try:
            self.client.connect(self.host, self.port)
        except OSError as exc:
            raise UsageError(f"could not connect to the broker at {self.where}: {exc}") from None
        self.client.loop_start()
        if not self.wait(lambda: self.connected is not None, self.timeout_s) or not self.connected:
            raise UsageError(f"the broker at {self.where}: {self.problem}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait(self, predicate: Any, timeout_s: float) -> bool:
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout_s))

    def read_retained(self, unit_id: str) -> None:
        """Subscribe to the unit's config and status; return once their retained copies are in."""
        self.client.subscribe([(topic_config(unit_id), 1), (topic_status(unit_id), 1)])
        # The broker sends a subscription's retained messages before it answers a later
        # SUBSCRIBE, so the SUBACK of this one (a topic that is never retained) marks the end.
        _, barrier = self.client.subscribe(topic_scans(unit_id), qos=0)
        if not self.wait(lambda: barrier in self.subacks, self.timeout_s):
            raise UsageError(f"the broker at {self.where} did not answer the subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise UsageError(f"could not publish to {self.where}: {info.rc.name}")
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"publish not confirmed by {self.where}: {exc}") from None
        if not info.is_published():
            raise UsageError(f"the broker at {self.where} did not confirm the config in time")
        with self._cond:
            refused = self.refused.get(info.mid)
        if refused:
            raise UsageError(f"the broker refused the config ({refused}): is this the hub's cert?")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self.connected = not reason.is_failure
            self.problem = f"the broker refused the connection: {reason}"
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages[message.topic] = bytes(message.payload)
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self.subacks.add(mid)
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if reason.is_failure:
            with self._cond:
                self.refused[mid] = str(reason)


class _Current(NamedTuple):
    config: UnitConfigUpdate | None  # None: nothing retained, or unreadable
    unreadable: str | None  # why the retained config could not be read
    seen: int  # the highest version retained or applied
    status: UnitStatus | None


def _current(link: _Link, unit_id: str) -> _Current:
    """What the broker holds for the unit: its retained config and status."""
    raw = link.messages.get(topic_config(unit_id), b"")
    current: UnitConfigUpdate | None = None
    unreadable: str | None = None
    seen = 0
    if raw:
        try:
            current = decode_message(raw, UnitConfigUpdate)
            seen = current.version
        except Refusal as exc:
            unreadable = exc.reason
            try:
                version = json.loads(raw).get("version")
            except (ValueError, AttributeError):
                version = None
            if isinstance(version, int) and not isinstance(version, bool):
                seen = max(seen, version)
    status: UnitStatus | None = None
    if raw_status := link.messages.get(topic_status(unit_id)):
        try:
            status = decode_message(raw_status, UnitStatus)
        except Refusal:
            status = None
    if status is not None and status.config_version is not None:
        seen = max(seen, status.config_version)
    return _Current(current, unreadable, seen, status)


def _describe(now: _Current) -> dict[str, Any]:
    config, status = now.config, now.status
    return {
        "published": None if config is None else json.loads(encode_message(config)),
        "published_unreadable": now.unreadable,
        "applied_version": None if status is None else status.config_version,
        "config_error": None if status is None else status.config_error,
        "unit_online": None if status is None else status.online,
    }


def _run_unit_config(args: argparse.Namespace) -> int:
    if not re.fullmatch(ID_PATTERN, args.unit):
        raise UsageError(f"{args.unit!r} is not a unit id")
    if not args.show and not args.settings:
        raise UsageError("give KEY=VALUE settings, or --show")
    if args.show and args.settings:
        raise UsageError("--show takes no settings")
    given = parse_settings(args.settings)
    if not args.show:
        _build(args.unit, 1, given)  # a bad value is refused before the broker is asked
    link = _Link(args)
    link.open()
    try:
        link.read_retained(args.unit)
        now = _current(link, args.unit)
        if args.show:
            print(json.dumps({"unit": args.unit, **_describe(now)}, indent=1, ensure_ascii=False))
            return 0
        if now.unreadable is not None:
            print(
                f"warning: the retained config of {args.unit} is unreadable ({now.unreadable}); "
                "the keys not given now fall back to the unit's own config file",
                file=sys.stderr,
            )
        merged = now.config.settings() if now.config is not None else {}
        merged.update(given)
        update = _build(args.unit, now.seen + 1, merged)
        link.publish(topic_config(args.unit), encode_message(update))
        print(
            f"unit-config {args.unit}: version {update.version} published (retained): "
            + json.dumps(update.settings(), ensure_ascii=False)
        )
        if args.wait_applied <= 0:
            return 0
        return _wait_applied(link, args.unit, update.version, args.wait_applied)
    finally:
        link.close()


def _wait_applied(link: _Link, unit_id: str, version: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    status_topic = topic_status(unit_id)
    last: bytes | None = None
    while (left := deadline - time.monotonic()) > 0:
        # Woken by the next status the unit publishes (it does at once after a config).
        link.wait(lambda seen=last: link.messages.get(status_topic) != seen, left)
        last = link.messages.get(status_topic)
        try:
            status = decode_message(last or b"", UnitStatus)
        except Refusal:
            continue
        if status.config_version == version:
            print(f"unit {unit_id} applied version {version}")
            return 0
        if status.config_error and f"version {version} " in status.config_error:
            print(f"unit {unit_id} refused version {version}: {status.config_error}")
            return EXIT_NOT_APPLIED
    print(f"unit {unit_id} did not report version {version} within {timeout_s:g} s")
    return EXIT_NOT_APPLIED
