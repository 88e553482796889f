"""`doorscan-hub` (or ``python -m hub``): the hub's command line.

    doorscan-hub init-vault /etc/doorscan/hub-vault.key   # once; back the file up apart
    export DOORSCAN_HUB_VAULT_KEY=/etc/doorscan/hub-vault.key
    doorscan-hub trace --id 064090123456 --since 2021-08-15T00:00+07:00 \\
        --until 2021-08-22T00:00+07:00 --reason "F0 case 12, Pleiku" --format table
    doorscan-hub visitors --venue cho-pleiku --since ... --until ... --reason "..."
    doorscan-hub import-csv old-scans.csv --add-venues --card-key cards.pub.pem
    doorscan-hub dead-letters --limit 20
    doorscan-hub held                  # scans held apart from traces; --release ID --reason
    doorscan-hub stats
    doorscan-hub audit verify          # exit 1 if the audit log was tampered with
    doorscan-hub audit list --limit 20
    doorscan-hub purge --retention-days 28
    doorscan-hub user add --id ytepleiku --name "Y tế Pleiku" --role tracer --password-stdin
    doorscan-hub token create --user ytepleiku --days 90
    doorscan-hub check --config /etc/doorscan-hub/hub.toml   # one line per check
    doorscan-hub serve --config /etc/doorscan-hub/hub.toml   # MQTT ingest (and the web app)
    doorscan-hub unit-config door-1 debounce_s=120 quiet_hours=22:00-06:00   # remote config

Every command but ``init-vault`` and ``audit keygen`` (which only write a key file)
takes ``--config FILE`` (default
``$DOORSCAN_HUB_CONFIG``; the typed TOML file of `hub.config`, e.g.
/etc/doorscan-hub/hub.toml), and flags given win over the file: ``--db`` (default
``hub.db``; a path, or a ``postgresql://`` URL) and ``--vault-key FILE`` (default
``$DOORSCAN_HUB_VAULT_KEY``, then the file's; there is no default key): the database
keeps identities sealed with that key (`hub.vault`) and refuses to open with another.
``doorscan-hub check`` verifies what a running hub needs (`hub.preflight`); ``serve``
runs the same checks and refuses to start on a failure. Commands that read identities
(trace, visitors) require a reason and are written to the audit log; they take
``--role tracer|venue|reporter|admin`` (default tracer) and ``--as-venue V`` for the
venue role, and read through `hub.access`, which
refuses, masks (MoH decision 2666/QĐ-BYT) and audits. Exit codes: 0 done, 1 done with
refused input (import-csv), 2 bad arguments (also: no vault key, or the wrong one), 3
not allowed for the role (one line ``not allowed: ...`` on stderr; nothing was read).

The commands live in rooms of their own: `hub.cli_reads` (trace, visitors: identity
reads), `hub.cli_admin` (init-vault, import-csv, stats, audit, purge), `hub.cli_letters`
(dead-letters, held), `hub.cli_serve` (serve), `hub.cli_web` (web, user, token),
`hub.cli_unitconfig` (unit-config), `hub.cli_check` (check), with what they share
in `hub.cli_common` (where the config file and the flags meet: `apply_config`).
To add a command, write
``add_x(commands)`` that registers a parser with ``parents=[db_parent()]`` and
``set_defaults(run=...)`` (a function of the parsed arguments returning the exit code),
and append it to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from doorscan.errors import ConfigError, Refusal
from hub.cli_admin import (
    add_audit,
    add_import_csv,
    add_init_vault,
    add_purge,
    add_stats,
)
from hub.cli_check import add_check, add_fleet_keys
from hub.cli_common import Commands, RefusedToStart, UsageError, apply_config
from hub.cli_letters import add_dead_letters, add_held
from hub.cli_reads import add_trace, add_visitors
from hub.cli_serve import add_serve
from hub.cli_unitconfig import add_fleet_update, add_unit_config
from hub.cli_web import add_token, add_user, add_web
from hub.store.factory import StoreError
from hub.workers import EXIT_REFUSED

__all__ = ["COMMANDS", "build_parser", "main"]


COMMANDS: list[Callable[[Commands], None]] = [
    add_init_vault,
    add_trace,
    add_visitors,
    add_import_csv,
    add_dead_letters,
    add_held,
    add_stats,
    add_serve,
    add_audit,
    add_purge,
    add_user,
    add_token,
    add_web,
    add_unit_config,
    add_fleet_update,
    add_check,
    add_fleet_keys,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="doorscan-hub", description="The doorscan hub: store, trace, import, inspect."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 after --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        apply_config(args)
        return int(args.run(args))
    except RefusedToStart as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (UsageError, ConfigError, Refusal, StoreError) as exc:
        reason = exc.reason if isinstance(exc, Refusal) else str(exc)
        print(f"{parser.prog} {args.command}: error: {reason}", file=sys.stderr)
        return 2
