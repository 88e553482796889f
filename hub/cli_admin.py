"""`init-vault`, `import-csv`, `dead-letters`, `held`, `stats`, `audit`, `purge`: the hub's data."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339
from hub.cli_common import Commands, UsageError, db_parent, open_store, printable, table
from hub.csv_import import import_csv
from hub.retention import DEFAULT_RETENTION_DAYS, purge_expired, retention_cutoff
from hub.vault import ENV_VAULT_KEY, Vault, VaultKeyError

__all__ = [
    "add_audit",
    "add_dead_letters",
    "add_held",
    "add_import_csv",
    "add_init_vault",
    "add_purge",
    "add_stats",
]


def add_init_vault(commands: Commands) -> None:
    parser = commands.add_parser(
        "init-vault",
        help="create the hub's vault key (encrypts identities at rest)",
        description="Write a new random vault key to FILE (mode 0600). An existing file is "
        "never replaced: the identities it encrypts would be lost.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="where to write the key")
    parser.set_defaults(run=_run_init_vault)


def _run_init_vault(args: argparse.Namespace) -> int:
    try:
        Vault.generate().save(args.file)
    except VaultKeyError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    print(f"wrote a new vault key to {args.file} (mode 0600)")
    print(
        "back it up now, apart from the database: without it the identities in the "
        "database are gone for good; with it, anyone holding a copy of the database reads them"
    )
    print(f"give it to every hub command with --vault-key {args.file} or ${ENV_VAULT_KEY}")
    return 0


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
    with open_store(args.db, args.vault_key, must_exist=False) as store:
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
        print(f"line {line}: {printable(message)}")
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
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        letters = store.dead_letters(args.limit)
    rows = [
        [
            format_rfc3339(d.received_at),
            d.source,
            printable(d.topic, 80),
            d.code,
            printable(d.reason, 120),
            printable(d.payload.decode("utf-8", "surrogateescape"), 60)
            + f" ({len(d.payload)} bytes)",
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
    parser.set_defaults(run=_run_held)


def _run_held(args: argparse.Namespace) -> int:
    if args.release and not (args.reason or "").strip():
        raise UsageError("--release needs --reason: releasing puts scans into traces")
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        if args.release:
            released = store.release_held(args.release)
            store.record_audit(
                "release_held",
                args.reason.strip(),
                {"asked": sorted(set(args.release)), "released": released},
                datetime.now(UTC),
            )
            missing = sorted(set(args.release) - set(released))
            print(f"released {len(released)} held scans into the scans")
            if missing:
                print(f"not held (unknown, or released before): {' '.join(missing)}")
            return 0
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        held = store.held_scans(args.limit)
    rows = [
        [
            format_rfc3339(h.received_at),
            h.unit_id or "-",
            h.venue_id,
            format_rfc3339(h.scanned_at),
            h.code,
            h.scan_id,
            printable(h.reason, 100),
        ]
        for h in held
    ]
    print(f"{len(rows)} held scans (newest first)")
    print(table(("RECEIVED", "UNIT", "VENUE", "SCANNED", "CODE", "SCAN", "WHY"), rows))
    return 0


def add_stats(commands: Commands) -> None:
    parser = commands.add_parser("stats", parents=[db_parent()], help="counts, as JSON")
    parser.set_defaults(run=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as store:
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
    with open_store(args.db, args.vault_key, must_exist=True) as store:
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
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        entries = store.audit_entries(args.limit)
    rows = [
        [
            str(e.id),
            format_rfc3339(e.at),
            e.action,
            printable(e.reason, 80),
            printable(json.dumps(e.params, ensure_ascii=False, sort_keys=True), 100),
            e.hash[:16],
        ]
        for e in entries
    ]
    print(f"{len(rows)} audit entries (newest first)")
    print(table(("ID", "AT", "ACTION", "REASON", "PARAMS", "HASH"), rows))
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
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        counts = purge_expired(store, now, args.retention_days)
    print(
        f"purged everything older than {format_rfc3339(retention_cutoff(now, args.retention_days))}"
        f": {counts['scans']} scans, {counts['dead_letters']} dead letters, "
        f"{counts['batches']} batch ids (the audit log is kept)"
    )
    return 0
