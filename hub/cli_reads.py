"""`trace` and `visitors`: the commands that read identities, through the access layer only."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from doorscan.timefmt import format_rfc3339, from_ms
from hub.access import (
    AccessControlledStore,
    Forbidden,
    Principal,
    PrincipalError,
    TraceQuestion,
)
from hub.cli_common import (
    EXIT_FORBIDDEN,
    Commands,
    UsageError,
    add_role_options,
    csv_lines,
    db_parent,
    depth_arg,
    format_option,
    minutes_arg,
    open_store,
    period_options,
    principal_from_args,
    shown_time,
    table,
    to_json,
)
from hub.trace import DEFAULT_DEPTH, TraceResult

__all__ = ["add_trace", "add_visitors"]


def add_trace(commands: Commands) -> None:
    parser = commands.add_parser(
        "trace", parents=[db_parent()], help="contacts (F1, F2...) of a person in a period"
    )
    parser.add_argument("--id", required=True, help="CCCD/CMND/passport number, card id or key")
    period_options(parser)
    parser.add_argument("--window-minutes", type=minutes_arg, default=60.0)
    parser.add_argument("--depth", type=depth_arg, default=DEFAULT_DEPTH)
    format_option(parser)
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
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        try:
            window = timedelta(minutes=args.window_minutes)
            question = TraceQuestion(args.id, args.since, args.until, window, args.depth)
            result = AccessControlledStore(store, principal).trace(
                question, args.reason, datetime.now(UTC)
            )
        except Forbidden as exc:
            return _not_allowed(args, exc)
    if not result.index.visits:
        print(f"note: no check-ins of {result.index.person_key} in the period", file=sys.stderr)
    print(_render_trace(result, args))
    return 0


def _render_trace(result: TraceResult, args: argparse.Namespace) -> str:
    if args.format == "json":
        return to_json(result.to_json_dict())
    headers = ("id_number", "name", "degree", "exposed_at", "venue_id", "via")
    rows = [
        [c.id_number, c.name, str(c.degree), format_rfc3339(c.exposed_at), c.venue_id, c.via]
        for c in result.contacts
    ]
    if args.format == "csv":
        return csv_lines(headers, rows)
    index, params = result.index, result.params
    visits = [[shown_time(v.at, args), v.venue_id] for v in index.visits]
    table_rows = [
        [f"F{c.degree}", shown_time(c.exposed_at, args), c.venue_id, c.id_number, c.name, c.via]
        for c in result.contacts
    ]
    window = params.to_json_dict()["window_minutes"]
    return "\n".join(
        [
            f"Index (F0): {index.id_number}  {index.name or '(never seen)'}  [{index.person_key}]",
            f"Period: {shown_time(params.since, args)} .. {shown_time(params.until, args)}, "
            f"window {window} min, depth {params.depth}",
            "",
            f"Visits of the index ({len(visits)}):",
            table(("AT", "VENUE"), visits),
            "",
            f"Contacts ({len(rows)}):",
            table(("DEGREE", "EXPOSED AT", "VENUE", "ID NUMBER", "NAME", "VIA"), table_rows),
        ]
    )


# -- visitors ------------------------------------------------------------------------------


def add_visitors(commands: Commands) -> None:
    parser = commands.add_parser(
        "visitors", parents=[db_parent()], help="who checked in at a venue in a period"
    )
    parser.add_argument("--venue", required=True, help="venue id")
    period_options(parser)
    format_option(parser)
    add_role_options(parser)
    parser.set_defaults(run=_run_visitors)


def _run_visitors(args: argparse.Namespace) -> int:
    principal = _principal(args)
    with open_store(args.db, args.vault_key, must_exist=True) as store:
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
    # A table is read by people (Vietnam time); JSON and CSV by programs (UTC).
    when = (lambda at: shown_time(at, args)) if args.format == "table" else format_rfc3339
    rows = [[when(from_ms(v.at_ms)), v.name, v.id_number, v.kind] for v in listing.visitors]
    headers = ("at", "name", "id_number", "kind")
    if args.format == "json":
        visitors = [dict(zip(headers, row, strict=True)) for row in rows]
        print(to_json({**params, "visitors": visitors}))
    elif args.format == "csv":
        print(csv_lines(headers, rows))
    else:
        masked = " (names and ID numbers masked: MoH 2666/QĐ-BYT)" if listing.masked else ""
        period = f"{shown_time(args.since, args)} .. {shown_time(args.until, args)}"
        print(f"{len(rows)} check-ins at {args.venue}, {period}{masked}")
        print(table([h.upper().replace("_", " ") for h in headers], rows))
    return 0


# -- import-csv ----------------------------------------------------------------------------
