"""`check`: everything a running hub needs, one line per check (`hub.preflight`).

    doorscan-hub check --config /etc/doorscan-hub/hub.toml

Exit 0 when nothing failed (warnings are printed and allowed), 1 when a check failed.
``serve`` runs the same checks, except contacting the broker, and refuses to start on a
failure.
"""

from __future__ import annotations

import argparse

from hub.cli_common import Commands, broker_parent, db_parent, keys_parent
from hub.cli_web import http_parent
from hub.preflight import failures, preflight, render

__all__ = ["add_check"]


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


def _run_check(args: argparse.Namespace) -> int:
    checks = preflight(args.hub_config)
    for line in render(checks):
        print(line)
    return 1 if failures(checks) else 0
