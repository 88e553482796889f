"""`unit-config`: set a door unit's remote config (debounce, buzzer, frame rate, quiet hours).

    doorscan-hub unit-config door-1 debounce_s=120 quiet_hours=22:00-06:00
    doorscan-hub unit-config door-1 feedback_volume=        # unset: the unit's own file decides
    doorscan-hub unit-config door-1 --show                  # issued and applied versions

The hub's database keeps every config it issued (`hub.store.ReportStore.issue_unit_config`):
the command merges the given keys into the latest one, checks the result with the same
model and strict decoding the unit uses, records it under the next version (one above
every version issued and the ones the unit reports applied or refused: a unit ignores a version it
has passed), then publishes it retained at QoS 1 on the unit's config topic. The
database, not the broker, is the record: under the broker ACL the hub may write config
topics but not read them, and a broker may lose what it retained.

An unknown key or a bad value is an error (exit 2) and nothing is recorded or published.
With ``--wait-applied S`` it then waits for the unit's status (which the hub may read):
exit 0 once the unit reports the version applied (``config_version``), 1 if it reports
it refused (``config_refused_version``, with ``config_error`` saying why) or said
nothing within S seconds. Only the hub's certificate may write config topics, so on a
TLS broker give the hub's files, as for `serve`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from doorscan.errors import Refusal
from doorscan.mqtt import (
    MQTT_5,
    ConfirmedPublisher,
    PublishNotConfirmed,
    TlsFiles,
    TlsFilesError,
    fresh_client_id,
    make_client,
    use_tls,
)
from doorscan.timefmt import format_rfc3339
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
from hub.access import record_event
from hub.cli_common import (
    Commands,
    UsageError,
    broker_parent,
    cli_principal,
    db_parent,
    open_store,
    tls_files,
)
from hub.store.factory import HubStore, StoreError

__all__ = ["add_unit_config", "parse_settings"]

EXIT_NOT_APPLIED = 1


def add_unit_config(commands: Commands) -> None:
    parser = commands.add_parser(
        "unit-config",
        parents=[db_parent(), broker_parent()],
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
        self.client = make_client(fresh_client_id("doorscan-hub-config"), protocol=MQTT_5)
        self._cond = threading.Condition()
        self.connected: bool | None = None
        self.problem = "no answer"
        self.messages: dict[str, bytes] = {}
        self.subacks: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.publisher = ConfirmedPublisher(self.client)
        tls = tls_files(args)
        broker = args.hub_config.broker
        if tls is not None and not {"cert_file", "key_file"} & args.flags_given:
            if broker.config_cert_file is not None:
                tls = TlsFiles(tls.ca_file, broker.config_cert_file, broker.config_key_file)
            else:
                print(
                    "warning: with the hub's own certificate this command takes the running "
                    "hub's place on the broker for a moment; give it its own "
                    "(broker.config_cert_file and config_key_file: hub-config-cert.pem from "
                    "`provisioning broker-files`)",
                    file=sys.stderr,
                )
        if tls is not None:
            try:
                use_tls(self.client, tls)
            except TlsFilesError as exc:
                raise UsageError(str(exc)) from None
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

    def watch_status(self, unit_id: str) -> None:
        """Subscribe to the unit's status; return once its retained copy (if any) is in."""
        self.client.subscribe(topic_status(unit_id), 1)
        # The broker sends a subscription's retained messages before it answers a later
        # SUBSCRIBE, so the SUBACK of this one (a topic that is never retained) marks the end.
        _, barrier = self.client.subscribe(topic_scans(unit_id), qos=0)
        if not self.wait(lambda: barrier in self.subacks, self.timeout_s):
            raise UsageError(f"the broker at {self.where} did not answer the subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        try:
            self.publisher.publish(topic, payload, retain=True, timeout_s=self.timeout_s)
        except PublishNotConfirmed as exc:
            if "refused" in str(exc):
                raise UsageError(
                    f"the broker at {self.where} refused the config ({exc}): "
                    "is this the hub's certificate?"
                ) from None
            raise UsageError(
                f"the broker at {self.where} did not confirm the config: {exc}"
            ) from None

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


def _status_of(link: _Link, unit_id: str) -> UnitStatus | None:
    """The unit's retained status on the broker (the hub may read status topics)."""
    raw = link.messages.get(topic_status(unit_id))
    try:
        return decode_message(raw, UnitStatus) if raw else None
    except Refusal:
        return None


def _show(store: HubStore, link: _Link, unit_id: str) -> dict[str, Any]:
    issued = store.unit_config(unit_id)
    status = _status_of(link, unit_id)
    return {
        "unit": unit_id,
        "issued": None
        if issued is None
        else {
            "version": issued.version,
            "settings": issued.settings,
            "issued_at": format_rfc3339(issued.issued_at),
        },
        "applied_version": None if status is None else status.config_version,
        "refused_version": None if status is None else status.config_refused_version,
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
    with open_store(args.db, args.vault_key, must_exist=False) as store:
        latest = store.unit_config(args.unit)
        merged = dict(latest.settings) if latest is not None else {}
        merged.update(given)
        merged = {key: value for key, value in merged.items() if value is not None}
        if not args.show:
            _build(args.unit, 1, merged)  # a bad value is refused before the broker is asked
        link = _Link(args)
        link.open()
        try:
            link.watch_status(args.unit)
            if args.show:
                print(json.dumps(_show(store, link, args.unit), indent=1, ensure_ascii=False))
                return 0
            # Above what the unit reports too: a version it applied or refused, which this
            # database may never have issued (another hub database, a raw publish).
            status = _status_of(link, args.unit)
            seen = [latest.version if latest else None]
            if status is not None:
                seen += [status.config_version, status.config_refused_version]
            update = _build(args.unit, max([v for v in seen if v], default=0) + 1, merged)
            link.publish(topic_config(args.unit), encode_message(update))
            # Recorded once the broker took it, so a refused publish leaves no version.
            try:
                store.record_unit_config(args.unit, update.version, merged, update.issued_at)
                record_event(
                    store,
                    "unit_config",
                    args.unit,
                    update.issued_at,
                    by=cli_principal(),
                    version=update.version,
                    settings=update.settings(),
                )
            except StoreError as exc:
                raise UsageError(f"published, but not recorded: {exc}") from None
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
        if status.config_version is not None and status.config_version >= version:
            print(f"unit {unit_id} applied version {status.config_version}")
            return 0
        if status.config_refused_version == version:
            print(f"unit {unit_id} refused version {version}: {status.config_error}")
            return EXIT_NOT_APPLIED
    print(f"unit {unit_id} did not report version {version} within {timeout_s:g} s")
    return EXIT_NOT_APPLIED
