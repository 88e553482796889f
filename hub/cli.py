"""`doorscan-hub` (or ``python -m hub``): the hub's command line.

    doorscan-hub trace --id 064090123456 --since 2021-08-15T00:00+07:00 \\
        --until 2021-08-22T00:00+07:00 --reason "F0 case 12, Pleiku" --format table
    doorscan-hub visitors --venue cho-pleiku --since ... --until ... --reason "..."
    doorscan-hub import-csv old-scans.csv --add-venues --card-key cards.pub.pem
    doorscan-hub dead-letters --limit 20
    doorscan-hub stats
    doorscan-hub audit verify          # exit 1 if the audit log was tampered with
    doorscan-hub audit list --limit 20
    doorscan-hub purge --retention-days 28

Every command takes ``--db`` (default ``hub.db``; a path today, a URL once there is
a PostgreSQL store). Commands that read identities (trace, visitors) require a reason
and are written to the audit log; they take ``--role tracer|venue|reporter|admin``
(default tracer) and ``--as-venue V`` for the venue role, and read through
`hub.access`, which refuses, masks (MoH decision 2666/QĐ-BYT) and audits. Exit codes:
0 done, 1 done with refused input (import-csv), 2 bad arguments, 3 not allowed for the
role (one line ``not allowed: ...`` on stderr; nothing was read).

To add a command (e.g. ``serve``), write ``add_x(commands)`` that registers a parser
with ``parents=[db_parent()]`` and ``set_defaults(run=...)`` (a function of the
parsed arguments returning the exit code), and append it to `COMMANDS`.

CSV output is for spreadsheets, so a cell that starts like a formula (``=``, ``+``,
``-``, ``@``) is prefixed with ``'``: visitor-card names are free text, and an export
that runs a formula is a known failure of other check-in systems.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

from doorscan.cards import CardKeyring
from doorscan.errors import DoorscanError, Refusal
from doorscan.sealing import load_private_key
from doorscan.timefmt import format_rfc3339, from_ms, parse_rfc3339
from hub.access import (
    AccessControlledStore,
    Forbidden,
    Principal,
    PrincipalError,
    add_role_options,
    principal_from_args,
)
from hub.csv_import import import_csv
from hub.ingest import Ingestor, describe
from hub.retention import DEFAULT_RETENTION_DAYS, purge_expired, retention_cutoff
from hub.service import HubService, TlsFiles
from hub.store import SqliteStore, Store
from hub.trace import DEFAULT_DEPTH, MAX_DEPTH, TraceResult

__all__ = ["COMMANDS", "build_parser", "db_parent", "main", "open_store"]

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXIT_FORBIDDEN = 3


class UsageError(DoorscanError, ValueError):
    """The command line asks for something impossible; exit code 2."""


def open_store(db: str, *, must_exist: bool) -> Store:
    """Open the store named by `--db`: a path, or a ``sqlite:///path`` URL."""
    if "://" in db:
        if not db.startswith("sqlite:///"):
            raise UsageError(f"--db {db!r}: only SQLite (a path or sqlite:///path) is supported")
        db = db.removeprefix("sqlite:///")
    if must_exist and db != ":memory:" and not Path(db).is_file():
        raise UsageError(f"no hub database at {db} (give its path with --db)")
    return SqliteStore(db)


def db_parent() -> argparse.ArgumentParser:
    """The options every command shares."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--db", default="hub.db", help="the hub database: a path (default: hub.db)")
    return parent


def _time_arg(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time with an offset, e.g. 2021-08-15T09:30:00+07:00"
        ) from None


def _minutes_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 7 * 24 * 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes from 0 to 10080")
    return value


def _depth_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_DEPTH:
        raise argparse.ArgumentTypeError(f"{text!r} is not a depth from 0 to {MAX_DEPTH}")
    return int(text)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("json", "table", "csv"), default="table")


def _period_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_time_arg, required=True, help="ISO 8601 with offset")
    parser.add_argument("--until", type=_time_arg, required=True, help="ISO 8601 with offset")
    parser.add_argument(
        "--reason", required=True, help="why identities are read (kept in the audit log)"
    )


# -- output helpers ------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True))
        for row in [list(headers), *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _csv(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["'" + c if c.startswith(_FORMULA_START) else c for c in row])
    return out.getvalue().rstrip("\n")


def _printable(text: str, limit: int | None = None) -> str:
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


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


# -- trace ---------------------------------------------------------------------------------


def add_trace(commands: Commands) -> None:
    parser = commands.add_parser(
        "trace", parents=[db_parent()], help="contacts (F1, F2...) of a person in a period"
    )
    parser.add_argument("--id", required=True, help="CCCD/CMND/passport number, card id or key")
    _period_options(parser)
    parser.add_argument("--window-minutes", type=_minutes_arg, default=60.0)
    parser.add_argument("--depth", type=_depth_arg, default=DEFAULT_DEPTH)
    _format_option(parser)
    add_role_options(parser)
    parser.set_defaults(run=_run_trace)


def _principal(args: argparse.Namespace) -> Principal:
    try:
        return principal_from_args(args)
    except PrincipalError as exc:
        raise UsageError(f"--role/--as-venue: {exc}") from None


def _not_allowed(args: argparse.Namespace, exc: Forbidden) -> int:
    print(f"doorscan-hub {args.command}: not allowed: {exc}", file=sys.stderr)
    return EXIT_FORBIDDEN


def _run_trace(args: argparse.Namespace) -> int:
    principal = _principal(args)
    with open_store(args.db, must_exist=True) as store:
        try:
            result = AccessControlledStore(store, principal).trace(
                args.id,
                args.since,
                args.until,
                timedelta(minutes=args.window_minutes),
                args.depth,
                args.reason,
                datetime.now(UTC),
            )
        except Forbidden as exc:
            return _not_allowed(args, exc)
    if not result.index.visits:
        print(f"note: no check-ins of {result.index.person_key} in the period", file=sys.stderr)
    print(_render_trace(result, args.format))
    return 0


def _render_trace(result: TraceResult, fmt: str) -> str:
    if fmt == "json":
        return _json(result.to_json_dict())
    headers = ("id_number", "name", "degree", "exposed_at", "venue_id", "via")
    rows = [
        [c.id_number, c.name, str(c.degree), format_rfc3339(c.exposed_at), c.venue_id, c.via]
        for c in result.contacts
    ]
    if fmt == "csv":
        return _csv(headers, rows)
    index, params = result.index, result.params.to_json_dict()
    visits = [[format_rfc3339(v.at), v.venue_id] for v in index.visits]
    table_rows = [[f"F{r[2]}", r[3], r[4], r[0], r[1], r[5]] for r in rows]
    return "\n".join(
        [
            f"Index (F0): {index.id_number}  {index.name or '(never seen)'}  [{index.person_key}]",
            f"Period: {params['since']} .. {params['until']}, window "
            f"{params['window_minutes']} min, depth {params['depth']}",
            "",
            f"Visits of the index ({len(visits)}):",
            _table(("AT", "VENUE"), visits),
            "",
            f"Contacts ({len(rows)}):",
            _table(("DEGREE", "EXPOSED AT", "VENUE", "ID NUMBER", "NAME", "VIA"), table_rows),
        ]
    )


# -- visitors ------------------------------------------------------------------------------


def add_visitors(commands: Commands) -> None:
    parser = commands.add_parser(
        "visitors", parents=[db_parent()], help="who checked in at a venue in a period"
    )
    parser.add_argument("--venue", required=True, help="venue id")
    _period_options(parser)
    _format_option(parser)
    add_role_options(parser)
    parser.set_defaults(run=_run_visitors)


def _run_visitors(args: argparse.Namespace) -> int:
    principal = _principal(args)
    with open_store(args.db, must_exist=True) as store:
        try:
            listing = AccessControlledStore(store, principal).visitors(
                args.venue, args.since, args.until, args.reason, datetime.now(UTC)
            )
        except Forbidden as exc:
            return _not_allowed(args, exc)
    params = {
        "venue_id": args.venue,
        "since": format_rfc3339(args.since),
        "until": format_rfc3339(args.until),
        "masked": listing.masked,
    }
    rows = [
        [format_rfc3339(from_ms(v.at_ms)), v.name, v.id_number, v.kind] for v in listing.visitors
    ]
    headers = ("at", "name", "id_number", "kind")
    if args.format == "json":
        visitors = [dict(zip(headers, row, strict=True)) for row in rows]
        print(_json({**params, "visitors": visitors}))
    elif args.format == "csv":
        print(_csv(headers, rows))
    else:
        masked = " (names and ID numbers masked: MoH 2666/QĐ-BYT)" if listing.masked else ""
        print(
            f"{len(rows)} check-ins at {args.venue}, {params['since']} .. {params['until']}"
            + masked
        )
        print(_table([h.upper().replace("_", " ") for h in headers], rows))
    return 0


# -- import-csv ----------------------------------------------------------------------------


def add_import_csv(commands: Commands) -> None:
    parser = commands.add_parser(
        "import-csv", parents=[db_parent()], help="load check-ins from a CSV file"
    )
    parser.add_argument("file", type=Path, help="venue_id,scanned_at,qr_text[,device_id]")
    parser.add_argument(
        "--add-venues", action="store_true", help="create unknown venues (name = id)"
    )
    parser.add_argument(
        "--card-key",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="a visitor-card public key to trust (repeatable)",
    )
    parser.set_defaults(run=_run_import_csv)


def _run_import_csv(args: argparse.Namespace) -> int:
    try:
        keys = CardKeyring.from_pem_files(args.card_key) if args.card_key else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--card-key: {exc}") from None
    with open_store(args.db, must_exist=False) as store:
        try:
            report = import_csv(
                store,
                args.file,
                add_venues=args.add_venues,
                card_keys=keys,
                received_at=datetime.now(UTC),
            )
        except Refusal as refusal:
            print(f"{args.file}: refused: {refusal.reason}", file=sys.stderr)
            return 1
    print(
        f"{args.file}: {report.rows} rows, {report.loaded} loaded, "
        f"{report.duplicates} duplicates (already stored), {len(report.errors)} errors"
    )
    for line, message in report.errors:
        print(f"line {line}: {_printable(message)}")
    return 1 if report.errors else 0


# -- dead-letters and stats ----------------------------------------------------------------


def add_dead_letters(commands: Commands) -> None:
    parser = commands.add_parser(
        "dead-letters", parents=[db_parent()], help="refused messages and scans, newest first"
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.set_defaults(run=_run_dead_letters)


def _run_dead_letters(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with open_store(args.db, must_exist=True) as store:
        letters = store.dead_letters(args.limit)
    rows = [
        [
            format_rfc3339(d.received_at),
            d.source,
            _printable(d.topic, 80),
            d.code,
            _printable(d.reason, 120),
            _printable(d.payload.decode("utf-8", "surrogateescape"), 60)
            + f" ({len(d.payload)} bytes)",
        ]
        for d in letters
    ]
    print(f"{len(rows)} dead letters (newest first)")
    print(_table(("RECEIVED", "SOURCE", "TOPIC", "CODE", "REASON", "PAYLOAD"), rows))
    return 0


def add_stats(commands: Commands) -> None:
    parser = commands.add_parser("stats", parents=[db_parent()], help="counts, as JSON")
    parser.set_defaults(run=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    with open_store(args.db, must_exist=True) as store:
        print(json.dumps(store.counts(), indent=2, sort_keys=True))
    return 0


# -- audit and purge -----------------------------------------------------------------------


def add_audit(commands: Commands) -> None:
    parser = commands.add_parser("audit", help="check or list the hash-chained audit log")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", parents=[db_parent()], help="check the chain; exit 1 if it is broken"
    )
    verify.set_defaults(run=_run_audit_verify)
    listing = actions.add_parser("list", parents=[db_parent()], help="entries, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=_run_audit_list)


def _run_audit_verify(args: argparse.Namespace) -> int:
    with open_store(args.db, must_exist=True) as store:
        check = store.verify_audit()
    if check.ok:
        print(f"audit log intact: {check.entries} entries (head {check.head_hash})")
        return 0
    where = "" if check.first_bad_id is None else f" at entry {check.first_bad_id}"
    print(f"audit log BROKEN{where}: {check.problem}")
    print(f"{check.entries} entries check good before it (last good hash {check.head_hash})")
    return 1


def _run_audit_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with open_store(args.db, must_exist=True) as store:
        entries = store.audit_entries(args.limit)
    rows = [
        [
            str(e.id),
            format_rfc3339(e.at),
            e.action,
            _printable(e.reason, 80),
            _printable(json.dumps(e.params, ensure_ascii=False, sort_keys=True), 100),
            e.hash[:16],
        ]
        for e in entries
    ]
    print(f"{len(rows)} audit entries (newest first)")
    print(_table(("ID", "AT", "ACTION", "REASON", "PARAMS", "HASH"), rows))
    return 0


def _days_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 36_500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days above 0")
    return value


def add_purge(commands: Commands) -> None:
    parser = commands.add_parser(
        "purge",
        parents=[db_parent()],
        help="delete scans, dead letters and batch ids older than the retention period",
        description="The audit log is kept: it records who read whose identity (see "
        "hub/retention.py).",
    )
    parser.add_argument(
        "--retention-days",
        type=_days_arg,
        default=DEFAULT_RETENTION_DAYS,
        help=f"keep this many days (default {DEFAULT_RETENTION_DAYS})",
    )
    parser.set_defaults(run=_run_purge)


def _run_purge(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_store(args.db, must_exist=True) as store:
        counts = purge_expired(store, now, args.retention_days)
    print(
        f"purged everything older than {format_rfc3339(retention_cutoff(now, args.retention_days))}"
        f": {counts['scans']} scans, {counts['dead_letters']} dead letters, "
        f"{counts['batches']} batch ids (the audit log is kept)"
    )
    return 0


def add_serve(commands: Commands) -> None:
    parser = commands.add_parser(
        "serve",
        parents=[db_parent()],
        help="receive scans from the broker, store them, ack them (runs until stopped)",
        description="Subscribe to the registry and all scans; ack each batch after its commit.",
    )
    parser.add_argument(
        "--broker-host", default="127.0.0.1", help="MQTT broker (default 127.0.0.1)"
    )
    parser.add_argument("--broker-port", type=int, default=1883, help="MQTT port (default 1883)")
    parser.add_argument(
        "--client-id", default="doorscan-hub", help="MQTT client id (persistent session)"
    )
    parser.add_argument(
        "--card-key",
        dest="card_keys",
        metavar="PEM",
        type=Path,
        action="append",
        default=[],
        help="visitor-card public key to trust; repeat for several",
    )
    parser.add_argument(
        "--seal-key",
        type=Path,
        metavar="KEY",
        help="the hub's PRIVATE sealing key (PEM or 32 raw bytes): opens scans sent sealed",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    tls = parser.add_argument_group("TLS (all three, from `provisioning broker-files`)")
    tls.add_argument("--ca-file", type=Path, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument("--cert-file", type=Path, metavar="PEM", help="the hub's client certificate")
    tls.add_argument("--key-file", type=Path, metavar="PEM", help="the hub's private key")
    parser.set_defaults(run=_run_serve)


def _serve_tls(args: argparse.Namespace) -> TlsFiles | None:
    given = (args.ca_file, args.cert_file, args.key_file)
    if all(path is None for path in given):
        return None
    if any(path is None for path in given):
        raise UsageError("--ca-file, --cert-file and --key-file go together")
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    card_keys = CardKeyring.from_pem_files(args.card_keys) if args.card_keys else None
    sealing_key = load_private_key(args.seal_key) if args.seal_key else None
    tls = _serve_tls(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_store(args.db, must_exist=False) as store:
        ingestor = Ingestor(store, card_keys=card_keys, sealing_key=sealing_key)
        with HubService(
            ingestor, args.broker_host, args.broker_port, client_id=args.client_id, tls=tls
        ) as service:
            if not service.wait_connected(30):
                print("hub: no broker yet; retrying in the background", file=sys.stderr)
            # Scripts (the demo, tests) wait for this line before they publish.
            print(
                f"hub ready: db={args.db} broker={args.broker_host}:{args.broker_port}", flush=True
            )
            stop.wait()
        print(f"hub stopped: {describe(ingestor.counters)}", flush=True)
    return 0


COMMANDS: list[Callable[[Commands], None]] = [
    add_trace,
    add_visitors,
    add_import_csv,
    add_dead_letters,
    add_stats,
    add_serve,
    add_audit,
    add_purge,
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
        return int(args.run(args))
    except (UsageError, Refusal) as exc:
        reason = exc.reason if isinstance(exc, Refusal) else str(exc)
        print(f"{parser.prog} {args.command}: error: {reason}", file=sys.stderr)
        return 2
