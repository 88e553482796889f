"""`check`: everything a running hub needs, one line per check (`hub.preflight`).

    doorscan-hub check --config /etc/doorscan-hub/hub.toml

Exit 0 when nothing failed (warnings are printed and allowed), 1 when a check failed.
``serve`` runs the same checks, except contacting the broker, and refuses to start on a
failure.
"""

from __future__ import annotations

import argparse

from doorscan.timefmt import format_rfc3339
from doorscan.wire import FleetKeys, decode_message, key_fingerprint
from hub.cli_common import Commands, broker_parent, db_parent, keys_parent, open_store
from hub.cli_web import http_parent
from hub.preflight import failures, preflight, render

__all__ = ["add_check", "add_fleet_keys"]


def add_check(commands: Commands) -> None:
    parser = commands.add_parser(
        "check",
        parents=[db_parent(), broker_parent(), keys_parent(), http_parent()],
        help="check the config: database, vault key, keys against the fleet's, broker, HTTPS",
        description="Prints one line per check; exit 1 if one failed. The broker is "
        "contacted up to its TLS handshake only (an MQTT connection with the hub's "
        "certificate would take the running hub's place).",
    )
    parser.set_defaults(run=_run_check)


def add_fleet_keys(commands: Commands) -> None:
    parser = commands.add_parser(
        "fleet-keys",
        parents=[db_parent()],
        help="show the fleet's public keys this hub last received; --forget drops them",
        description="The hub keeps the FleetKeys message it last received, so that it "
        "compares its keys before it starts. If a wrong fleet home published them, publish "
        "the right ones, then --forget the kept copy: serve then starts and compares with "
        "the retained message the broker hands it.",
    )
    parser.add_argument(
        "--forget", action="store_true", help="drop the kept copy (the hub's keys stay)"
    )
    parser.set_defaults(run=_run_fleet_keys)


def _run_fleet_keys(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        kept = store.fleet_keys()
        if kept is None:
            print("no fleet keys kept: none has reached this hub yet")
            return 0
        keys = decode_message(kept[0].encode("utf-8"), FleetKeys)
        seal = key_fingerprint(keys.seal_public_key) if keys.seal_public_key else "none"
        cards = ", ".join(key_fingerprint(k) for k in keys.card_public_keys) or "none"
        print(
            f"fleet keys received {format_rfc3339(kept[1])}: sealing key {seal}; card keys {cards}"
        )
        if args.forget:
            store.forget_fleet_keys()
            print("forgotten: the next FleetKeys the hub receives is compared and kept")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    checks = preflight(args.hub_config)
    for line in render(checks):
        print(line)
    return 1 if failures(checks) else 0
