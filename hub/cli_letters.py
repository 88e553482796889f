"""`dead-letters` and `held`: what ingest refused or held apart, listed, replayed, released.

    doorscan-hub dead-letters                        # what, when, from where, why, how big
    doorscan-hub dead-letters --payloads --reason R  # the payloads too (audited)
    doorscan-hub dead-letters replay --seal-key KEY  # judge again after a fix (`hub.replay`)
    doorscan-hub held [--release ID... --reason R]   # scans held apart from traces

Every read goes through `hub.access` as the operating-system user in the admin role.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from doorscan.cards import CardKeyring
from doorscan.sealing import load_private_key
from hub.access import AccessControlledStore, DeadLetter
from hub.cli_common import (
    Commands,
    UsageError,
    cli_principal,
    db_parent,
    open_store,
    printable,
    shown_time,
    table,
    time_arg,
    utc_option,
)
from hub.ingest import Ingestor
from hub.replay import replay_dead_letters

__all__ = ["add_dead_letters", "add_held"]


def add_dead_letters(commands: Commands) -> None:
    parser = commands.add_parser(
        "dead-letters",
        parents=[db_parent()],
        help="refused messages and scans, newest first (payloads only with a reason)",
        description="Lists what ingest refused: when, from where, the code and why, and "
        "the payload's size. A payload can hold an identity (a refused scan's QR text), so "
        "it is printed only with --payloads and a --reason, and that read is audited.",
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("list", "replay"),
        default="list",
        help="list (the default), or replay: judge the kept scans again with the keys given "
        "now, store what passes, remove the letters that are then fully stored (audited)",
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument(
        "--payloads", action="store_true", help="print the first 60 characters of each payload"
    )
    parser.add_argument(
        "--reason", default="", help="why payloads are read (with --payloads, or replay)"
    )
    parser.add_argument(
        "--code", action="append", default=[], help="replay: only letters with this code"
    )
    parser.add_argument(
        "--since", type=time_arg, help="replay: only letters received since (RFC 3339)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="replay: judge, but store and remove nothing"
    )
    parser.add_argument(
        "--seal-key", type=Path, metavar="KEY", help="replay: the hub's private sealing key"
    )
    parser.add_argument(
        "--card-key",
        dest="card_keys",
        type=Path,
        action="append",
        metavar="PEM",
        help="replay: a visitor-card public key to trust (repeatable)",
    )
    utc_option(parser)
    parser.set_defaults(run=_run_dead_letters)


def _run_replay(args: argparse.Namespace) -> int:
    try:
        card_keys = CardKeyring.from_pem_files(args.card_keys) if args.card_keys else None
        sealing_key = load_private_key(args.seal_key) if args.seal_key else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--seal-key/--card-key: {exc}") from None
    now = datetime.now(UTC)
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        # The rate bound is off: these scans were judged at their own pace when they came.
        ingestor = Ingestor(
            store, card_keys=card_keys, sealing_key=sealing_key, max_scans_per_minute=0
        )
        report = replay_dead_letters(
            store,
            ingestor,
            cli_principal(),
            codes=set(args.code),
            since=args.since,
            at=now,
            reason=args.reason.strip() or "replay after a fix",
            dry_run=args.dry_run,
        )
    how = "would recover" if args.dry_run else "recovered"
    print(
        f"{report.looked_at} dead letters replayed: {how} {report.recovered} "
        f"({report.scans_stored} scans stored), {report.still_refused} still refused"
        + (f" ({_counts(report.codes_now)})" if report.codes_now else "")
    )
    return 0


def _counts(codes: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))


def _run_dead_letters(args: argparse.Namespace) -> int:
    if args.action == "replay":
        return _run_replay(args)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.payloads and not args.reason.strip():
        raise UsageError("--payloads needs --reason: a payload can hold an identity")
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        letters = AccessControlledStore(store, cli_principal()).dead_letters(
            args.limit, datetime.now(UTC), payloads=args.payloads, reason=args.reason
        )

    def payload(d: DeadLetter) -> str:
        if not d.payload:
            return f"({d.size} bytes)"
        return printable(d.payload.decode("utf-8", "surrogateescape"), 60) + f" ({d.size} bytes)"

    rows = [
        [
            shown_time(d.received_at, args),
            d.source,
            printable(d.topic, 80),
            d.code,
            printable(d.reason, 120),
            payload(d),
        ]
        for d in letters
    ]
    print(f"{len(rows)} dead letters (newest first)")
    print(table(("RECEIVED", "SOURCE", "TOPIC", "CODE", "REASON", "PAYLOAD"), rows))
    return 0


def add_held(commands: Commands) -> None:
    parser = commands.add_parser(
        "held",
        parents=[db_parent()],
        help="scans held apart from traces (hub.history), newest first; release them",
        description="A scan a unit claims at a time it cannot have scanned (before it was "
        "registered, before it last said it had sent everything, or faster than a door) is "
        "kept apart: traces, visitor lists and reports do not read it. List them, or "
        "release those found genuine into the scans (audited, with the reason).",
    )
    parser.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    parser.add_argument(
        "--release", nargs="+", metavar="SCAN_ID", help="move these held scans into the scans"
    )
    parser.add_argument("--reason", help="why they are released (required with --release)")
    utc_option(parser)
    parser.set_defaults(run=_run_held)


def _run_held(args: argparse.Namespace) -> int:
    if args.release and not (args.reason or "").strip():
        raise UsageError("--release needs --reason: releasing puts scans into traces")
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        reader = AccessControlledStore(store, cli_principal())
        if args.release:
            released = reader.release_held(args.release, args.reason, datetime.now(UTC))
            missing = sorted(set(args.release) - set(released))
            print(f"released {len(released)} held scans into the scans")
            if missing:
                print(f"not held (unknown, or released before): {' '.join(missing)}")
            return 0
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        held = reader.held(args.limit, datetime.now(UTC))
    rows = [
        [
            shown_time(h.received_at, args),
            h.unit_id or "-",
            h.venue_id,
            shown_time(h.scanned_at, args),
            h.code,
            h.scan_id,
            printable(h.reason, 100),
        ]
        for h in held
    ]
    print(f"{len(rows)} held scans (newest first)")
    print(table(("RECEIVED", "UNIT", "VENUE", "SCANNED", "CODE", "SCAN", "WHY"), rows))
    return 0
