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
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from doorscan.errors import DoorscanError
from doorscan.netaddr import is_loopback
from doorscan.timefmt import format_rfc3339, format_vietnam, parse_rfc3339
from hub.access import Channel, Principal, Role
from hub.config import (
    ENV_CONFIG,
    BrokerSettings,
    ConfigFileError,
    build_config,
    read_config_file,
)
from hub.store.factory import HubStore, StoreError, is_postgres, open_hub_store, sqlite_path
from hub.trace import MAX_DEPTH
from hub.vault import ENV_VAULT_KEY, Vault, VaultKeyError

if TYPE_CHECKING:
    from doorscan.mqtt import TlsFiles

__all__ = [
    "EXIT_FORBIDDEN",
    "Commands",
    "RefusedToStart",
    "UsageError",
    "add_role_options",
    "apply_config",
    "broker_parent",
    "broker_problem",
    "config_option",
    "cli_principal",
    "csv_lines",
    "db_parent",
    "depth_arg",
    "format_option",
    "http_address",
    "keys_parent",
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
    "where",
]

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXIT_FORBIDDEN = 3


class UsageError(DoorscanError, ValueError):
    """The command line asks for something impossible; exit code 2."""


class RefusedToStart(UsageError):
    """``serve`` refuses to start on a failed check; exit code `hub.workers.EXIT_REFUSED`."""


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
    """The options of every command that talks to the broker: where, and the TLS files.

    No default host: a command that publishes (a retained unit config) to whatever
    broker happens to listen on this machine is how configs went to the wrong place.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--broker-host", help="MQTT broker (or broker.host in --config)")
    parent.add_argument(
        "--broker-port", type=int, help="MQTT port (default 8883 with TLS files, else 1883)"
    )
    parent.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plain MQTT (no TLS) to a broker that is not on this machine",
    )
    tls = parent.add_argument_group("TLS (all three, from `provisioning broker-files`)")
    tls.add_argument("--ca-file", type=Path, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument("--cert-file", type=Path, metavar="PEM", help="the hub's client certificate")
    tls.add_argument("--key-file", type=Path, metavar="PEM", help="the hub's private key")
    return parent


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The broker settings of `args` checked (`broker_problem`), and their TLS files:
    all three, or None for plain TCP."""
    from doorscan.mqtt import TlsFiles  # here: only commands that connect need paho

    problem = broker_problem(args.hub_config.broker)
    if problem is not None:
        raise UsageError(problem)
    if args.ca_file is None:
        if not is_loopback(args.broker_host):
            print(
                f"warning: plain MQTT to {args.broker_host}:{args.broker_port}: scans, "
                "configs and credentials cross the network readable (--insecure)",
                file=sys.stderr,
            )
        return None
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


def broker_problem(broker: BrokerSettings) -> str | None:
    """Why these broker settings must not be used, or None: no host, or plain MQTT to
    another machine without ``insecure``."""
    if broker.host is None:
        return "no broker host: give --broker-host or broker.host in --config"
    if not broker.tls and not broker.insecure and not is_loopback(broker.host):
        return (
            f"plain MQTT to {broker.host} would cross the network unencrypted: give the TLS "
            "files (broker.ca_file, cert_file, key_file, or --ca-file ...), or --insecure "
            "(broker.insecure = true) to mean it"
        )
    return None


def keys_parent() -> argparse.ArgumentParser:
    """The keys that open what units send: the sealing key and the card keys."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--seal-key",
        type=Path,
        metavar="KEY",
        help="the hub's PRIVATE sealing key (PEM or 32 raw bytes): opens scans sent sealed",
    )
    parent.add_argument(
        "--card-key",
        dest="card_keys",
        metavar="PEM",
        type=Path,
        action="append",
        help="visitor-card public key to trust; repeat for several",
    )
    return parent


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the hub config file (TOML; default ${ENV_CONFIG}); flags given win over it",
    )


def db_parent() -> argparse.ArgumentParser:
    """The options every command shares: the config file, the database and the vault key
    that opens it."""
    parent = argparse.ArgumentParser(add_help=False)
    config_option(parent)
    parent.add_argument(
        "--db",
        help="the hub database: a path or postgresql://... URL (default: hub.db)",
    )
    parent.add_argument(
        "--vault-key",
        type=Path,
        metavar="FILE",
        help=f"the hub's vault key (default: ${ENV_VAULT_KEY}); it opens the identities",
    )
    return parent


# Each option that a config file can also set: its argparse dest, and (table, key).
_FLAG_SETTINGS: dict[str, tuple[str, str]] = {
    "db": ("database", "url"),
    "vault_key": ("database", "vault_key"),
    "broker_host": ("broker", "host"),
    "broker_port": ("broker", "port"),
    "client_id": ("broker", "client_id"),
    "ca_file": ("broker", "ca_file"),
    "cert_file": ("broker", "cert_file"),
    "key_file": ("broker", "key_file"),
    "insecure": ("broker", "insecure"),
    "seal_key": ("keys", "seal_key"),
    "card_keys": ("keys", "card_keys"),
    "http": ("http", "listen"),
    "http_cert": ("http", "cert_file"),
    "http_key": ("http", "key_file"),
    "trusted_proxy": ("http", "trusted_proxies"),
    "http_insecure": ("http", "insecure"),
    "workers": ("ingest", "workers"),
    "max_scans_per_minute": ("ingest", "max_scans_per_minute"),
    "report_every_s": ("ingest", "report_every_s"),
    "retention_days": ("retention", "days"),
    "log_level": ("logging", "level"),
}


def apply_config(args: argparse.Namespace) -> None:
    """Lay the flags given over the config file (``--config``, else ``$DOORSCAN_HUB_CONFIG``),
    check the result as one `HubConfig` (``args.hub_config``), and write the resolved
    values back into `args` so each command reads one answer. A command without
    ``--config`` (init-vault, keygen) is left as it is."""
    if not hasattr(args, "config"):
        return
    path = args.config or (Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else None)
    try:
        data = read_config_file(path) if path is not None else {}
    except ConfigFileError as exc:
        raise UsageError(str(exc)) from None
    args.flags_given = {
        dest for dest in _FLAG_SETTINGS if getattr(args, dest, None) not in (None, [])
    }
    if getattr(args, "vault_key", None) is None and os.environ.get(ENV_VAULT_KEY, "").strip():
        args.vault_key = Path(os.environ[ENV_VAULT_KEY].strip())
    flags = [f"--{dest.replace('_', '-')}" for dest in sorted(args.flags_given)]
    for dest, (section, key) in _FLAG_SETTINGS.items():
        value = getattr(args, dest, None)
        if value is None or value == []:
            continue
        if dest == "http":
            value = where(value)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"{path}: {section} must be a table ([{section}]), not a value")
        table[key] = value if not isinstance(value, Path) else str(value)
    try:
        given = f" with {', '.join(flags)}" if flags else ""
        config = build_config(data, f"{path}{given}" if path else "the command line")
    except ConfigFileError as exc:
        raise UsageError(str(exc)) from None
    args.hub_config = config
    for dest, (section, key) in _FLAG_SETTINGS.items():
        if hasattr(args, dest):
            setattr(args, dest, getattr(getattr(config, section), key))
    if hasattr(args, "broker_port"):
        args.broker_port = config.broker.effective_port
    if hasattr(args, "http"):
        args.http = http_address(config.http.listen) if config.http.listen else None


def http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port), for ``--http``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def where(address: tuple[str, int]) -> str:
    """(host, port) as a URL authority: ``127.0.0.1:8080``, ``[::1]:8080``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
