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
import hashlib
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
from doorscan.release import check_version
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

__all__ = ["add_fleet_update", "add_unit_config", "choose_units", "parse_settings", "rollout_share"]

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
            update = _issue(store, link, args.unit, merged, latest.version if latest else None)
            print(
                f"unit-config {args.unit}: version {update.version} published (retained): "
                + json.dumps(update.settings(), ensure_ascii=False)
            )
            if args.wait_applied <= 0:
                return 0
            return _wait_applied(link, args.unit, update.version, args.wait_applied)
        finally:
            link.close()


def _issue(
    store: HubStore, link: _Link, unit_id: str, merged: dict[str, Any], latest: int | None
) -> UnitConfigUpdate:
    """Publish `merged` as the unit's next config version (retained), then record it.

    The unit's status must be watched already (`_Link.watch_status`): the version goes
    above what the unit reports too, a version it applied or refused, which this
    database may never have issued (another hub database, a raw publish).
    """
    status = _status_of(link, unit_id)
    seen = [latest]
    if status is not None:
        seen += [status.config_version, status.config_refused_version]
    update = _build(unit_id, max([v for v in seen if v], default=0) + 1, merged)
    link.publish(topic_config(unit_id), encode_message(update))
    # Recorded once the broker took it, so a refused publish leaves no version.
    try:
        store.record_unit_config(unit_id, update.version, merged, update.issued_at)
        record_event(
            store,
            "unit_config",
            unit_id,
            update.issued_at,
            by=cli_principal(),
            version=update.version,
            settings=update.settings(),
        )
    except StoreError as exc:
        raise UsageError(f"published, but not recorded: {exc}") from None
    return update


# -- fleet-update ------------------------------------------------------------------------------


def add_fleet_update(commands: Commands) -> None:
    parser = commands.add_parser(
        "fleet-update",
        parents=[db_parent(), broker_parent()],
        help="tell units which signed release to run (the software key of their remote config)",
        description="Sets software=VERSION in the remote config of the units chosen: all "
        "active units, --units or --venue, then --percent of those (the same units each "
        "time, and a higher percent adds units, never swaps them).",
    )
    parser.add_argument("--version", required=True, help="a release published by provisioning")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--units", nargs="+", metavar="UNIT", help="these units only")
    scope.add_argument("--venue", metavar="VENUE", help="the units of this venue only")
    parser.add_argument(
        "--percent", type=int, default=100, metavar="N", help="a stable N %% of those (1-100)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the units that would be told, tell none"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=10.0, help="give up on the broker after this (s)"
    )
    parser.set_defaults(run=_run_fleet_update)


def rollout_share(unit_id: str) -> int:
    """0..99, fixed for a unit: it is in a rollout of N % when this is below N."""
    return int.from_bytes(hashlib.sha256(unit_id.encode("utf-8")).digest()[:4], "big") % 100


def choose_units(
    units: list[tuple[str, str, bool]], chosen: list[str] | None, venue: str | None, percent: int
) -> list[str]:
    """The active units (of (unit id, venue id, active)) a rollout tells, in id order.

    `UsageError` for a unit asked for by name that is not active here.
    """
    active = {unit_id: venue_id for unit_id, venue_id, is_active in units if is_active}
    if chosen is not None:
        unknown = sorted(set(chosen) - set(active))
        if unknown:
            raise UsageError(f"not an active unit of this hub: {', '.join(unknown)}")
        picked = sorted(set(chosen))
    else:
        picked = sorted(u for u, at in active.items() if venue is None or at == venue)
    return [u for u in picked if rollout_share(u) < percent]


def _run_fleet_update(args: argparse.Namespace) -> int:
    try:
        version = check_version(args.version)
    except Refusal as exc:
        raise UsageError(exc.reason) from None
    if not 1 <= args.percent <= 100:
        raise UsageError("--percent is 1 to 100")
    releases = args.hub_config.http.releases_dir
    if releases is not None and not (releases / "targets" / "releases" / version).is_dir():
        raise UsageError(f"release {version} is not published in {releases}")
    with open_store(args.db, args.vault_key, must_exist=False) as store:
        registry = [(u.unit_id, u.venue_id, u.active) for u in store.unit_scan_summaries()]
        targets = choose_units(registry, args.units, args.venue, args.percent)
        if not targets:
            raise UsageError("no active unit matches")
        if args.dry_run:
            for unit_id in targets:
                print(f"fleet-update {unit_id}: would be told software={version}")
            return 0
        link = _Link(args)
        link.open()
        try:
            for unit_id in targets:
                link.watch_status(unit_id)
                latest = store.unit_config(unit_id)
                merged = dict(latest.settings) if latest is not None else {}
                merged["software"] = version
                update = _issue(store, link, unit_id, merged, latest.version if latest else None)
                print(f"fleet-update {unit_id}: version {update.version}, software={version}")
        finally:
            link.close()
    print(f"{len(targets)} unit(s) told to run {version}")
    return 0


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
