"""What every `doorscan-hub` command shares: opening the store, time options, output formats.

CSV output is for spreadsheets, so a cell that starts like a formula (``=``, ``+``, ``-``,
``@``, tab, carriage return) is prefixed with ``'``: visitor-card names are free text, and
an export that runs a formula is a known failure of other check-in systems.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from doorscan.errors import DoorscanError
from doorscan.timefmt import format_rfc3339, format_vietnam, parse_rfc3339
from hub.access import Channel, Principal, Role
from hub.store.factory import HubStore, StoreError, is_postgres, open_hub_store, sqlite_path
from hub.trace import MAX_DEPTH
from hub.vault import ENV_VAULT_KEY, Vault, VaultKeyError

if TYPE_CHECKING:
    from doorscan.mqtt import TlsFiles

__all__ = [
    "EXIT_FORBIDDEN",
    "Commands",
    "UsageError",
    "add_role_options",
    "broker_parent",
    "cli_principal",
    "csv_lines",
    "db_parent",
    "depth_arg",
    "format_option",
    "load_vault",
    "minutes_arg",
    "open_store",
    "os_account",
    "period_options",
    "principal_from_args",
    "printable",
    "shown_time",
    "table",
    "time_arg",
    "tls_files",
    "utc_option",
    "to_json",
]

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXIT_FORBIDDEN = 3


class UsageError(DoorscanError, ValueError):
    """The command line asks for something impossible; exit code 2."""


def os_account() -> str:
    """The operating-system user running the command, as the audit log names it.

    Read from the process's real uid, not from ``$USER`` (which anyone can set); a
    command run through sudo names the user who ran sudo too.
    """
    import pwd  # POSIX only, like the hub itself

    name = pwd.getpwuid(os.getuid()).pw_name
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != name:
        return f"os:{name} (sudo by {sudo_user})"[:64]
    return f"os:{name}"[:64]


def cli_principal(role: Role = Role.ADMIN, venue_id: str | None = None) -> Principal:
    """The command-line operator in `role` (admin for the operators' commands)."""
    return Principal(role, venue_id, account=os_account(), channel=Channel.CLI)


def add_role_options(parser: argparse.ArgumentParser) -> None:
    """``--role`` (default tracer) and ``--as-venue``, for commands that read identities."""
    parser.add_argument(
        "--role",
        choices=[str(r) for r in Role],
        default=str(Role.TRACER),
        help="who asks: tracer (health service, full data; the default), venue (own venue, "
        "masked as MoH decision 2666/QĐ-BYT says), reporter or admin (no identities)",
    )
    parser.add_argument(
        "--as-venue", metavar="VENUE_ID", help="the venue id of the venue role (only with it)"
    )


def principal_from_args(args: argparse.Namespace) -> Principal:
    """The principal `add_role_options` names, as the OS user; `PrincipalError` if they
    do not fit. A role on the command line is a claim: whoever can open the database can
    read everything (docs/security.md); the audit still names who ran the command."""
    return cli_principal(Role(args.role), args.as_venue)


def load_vault(vault_key: Path | None) -> Vault:
    """The vault named by ``--vault-key``, else by ``$DOORSCAN_HUB_VAULT_KEY``; no default.

    A default key would be a key every hub shares, so a missing one is a usage error.
    """
    if vault_key is None:
        from_env = os.environ.get(ENV_VAULT_KEY, "").strip()
        if not from_env:
            raise UsageError(
                f"no vault key: give --vault-key FILE or set {ENV_VAULT_KEY} "
                "(create one with `doorscan-hub init-vault FILE`)"
            )
        vault_key = Path(from_env)
    try:
        return Vault.load(vault_key)
    except VaultKeyError as exc:
        raise UsageError(str(exc)) from None


def open_store(db: str, vault_key: Path | None, *, must_exist: bool) -> HubStore:
    """Open the store named by `--db` (a path, ``sqlite:///path`` or ``postgresql://...``).

    `must_exist` applies to a SQLite file only: a PostgreSQL database is created by its
    administrator, and the store makes its tables on first open.
    """
    if not is_postgres(db):
        path = sqlite_path(db)
        if path is None:
            raise UsageError(f"--db {db!r}: give a path, sqlite:///path or a postgresql://... URL")
        if must_exist and path != ":memory:" and not Path(path).is_file():
            raise UsageError(f"no hub database at {path} (give its path with --db)")
    vault = load_vault(vault_key)
    try:
        return open_hub_store(db, vault=vault)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def broker_parent() -> argparse.ArgumentParser:
    """The options of every command that talks to the broker: where, and the TLS files."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--broker-host", default="127.0.0.1", help="MQTT broker (default 127.0.0.1)"
    )
    parent.add_argument("--broker-port", type=int, default=1883, help="MQTT port (default 1883)")
    tls = parent.add_argument_group("TLS (all three, from `provisioning broker-files`)")
    tls.add_argument("--ca-file", type=Path, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument("--cert-file", type=Path, metavar="PEM", help="the hub's client certificate")
    tls.add_argument("--key-file", type=Path, metavar="PEM", help="the hub's private key")
    return parent


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files `broker_parent` took: all three, or None for plain TCP."""
    from doorscan.mqtt import TlsFiles  # here: only commands that connect need paho

    given = (args.ca_file, args.cert_file, args.key_file)
    if all(path is None for path in given):
        return None
    if any(path is None for path in given):
        raise UsageError("--ca-file, --cert-file and --key-file go together")
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


def db_parent() -> argparse.ArgumentParser:
    """The options every command shares: the database and the vault key that opens it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        default="hub.db",
        help="the hub database: a path or postgresql://... URL (default: hub.db)",
    )
    parent.add_argument(
        "--vault-key",
        type=Path,
        metavar="FILE",
        help=f"the hub's vault key (default: ${ENV_VAULT_KEY}); it opens the identities",
    )
    return parent


def time_arg(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time with an offset, e.g. 2021-08-15T09:30:00+07:00"
        ) from None


def minutes_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 7 * 24 * 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes from 0 to 10080")
    return value


def depth_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_DEPTH:
        raise argparse.ArgumentTypeError(f"{text!r} is not a depth from 0 to {MAX_DEPTH}")
    return int(text)


def format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("json", "table", "csv"), default="table")
    utc_option(parser)


def utc_option(parser: argparse.ArgumentParser) -> None:
    """``--utc``: tables print Vietnam time with its offset unless asked for UTC."""
    parser.add_argument(
        "--utc",
        action="store_true",
        help="print the table's times in UTC (default: Vietnam time, +07:00; JSON and CSV "
        "are always UTC)",
    )


def shown_time(value: datetime, args: argparse.Namespace) -> str:
    """A time in a table: Vietnam time with its offset, or UTC with ``--utc``.

    People compare these with their day; a UTC time on a table read in Pleiku is a time
    someone reads seven hours wrong. Machine formats (JSON, CSV) stay UTC.
    """
    return format_rfc3339(value) if getattr(args, "utc", False) else format_vietnam(value)


def period_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=time_arg, required=True, help="ISO 8601 with offset")
    parser.add_argument("--until", type=time_arg, required=True, help="ISO 8601 with offset")
    parser.add_argument(
        "--reason", required=True, help="why identities are read (kept in the audit log)"
    )


# -- output helpers ------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True))
        for row in [list(headers), *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def csv_lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["'" + c if c.startswith(_FORMULA_START) else c for c in row])
    return out.getvalue().rstrip("\n")


def printable(text: str, limit: int | None = None) -> str:
    """Escape what a terminal would act on; bytes that were not UTF-8 show as \\xNN."""
    out = []
    for c in text:
        if 0xDC80 <= ord(c) <= 0xDCFF:  # a surrogateescape'd byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    joined = "".join(out)
    return joined if limit is None or len(joined) <= limit else joined[:limit] + "…"


def to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


# -- trace ---------------------------------------------------------------------------------
