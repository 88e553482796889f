"""`init-vault`, `import-csv`, `stats`, `audit`, `purge`: the hub's data and its record."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from doorscan.atomicfile import write_atomic
from doorscan.cards import CardKeyring
from doorscan.ed25519keys import Ed25519Keyring, Ed25519Signer
from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339
from hub.access import AccessControlledStore, AuditQuery
from hub.audit import Anchor
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
from hub.csv_import import import_csv
from hub.retention import DEFAULT_RETENTION_DAYS, purge_expired, retention_cutoff
from hub.vault import ENV_VAULT_KEY, Vault, VaultKeyError

__all__ = [
    "add_audit",
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
        dest="card_keys",
        type=Path,
        action="append",
        metavar="PEM",
        help="a visitor-card public key to trust (repeatable)",
    )
    parser.set_defaults(run=_run_import_csv)


def _run_import_csv(args: argparse.Namespace) -> int:
    try:
        keys = CardKeyring.from_pem_files(args.card_keys) if args.card_keys else None
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


# -- stats ---------------------------------------------------------------------------------


def add_stats(commands: Commands) -> None:
    parser = commands.add_parser("stats", parents=[db_parent()], help="counts, as JSON")
    parser.set_defaults(run=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        counts = AccessControlledStore(store, cli_principal()).counts()
    print(json.dumps(counts, indent=2, sort_keys=True))
    return 0


# -- audit and purge -----------------------------------------------------------------------


def add_audit(commands: Commands) -> None:
    parser = commands.add_parser("audit", help="check or list the hash-chained audit log")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        parents=[db_parent()],
        help="check the chain (and its anchors); exit 1 if it is broken",
        description="Checks every entry's link and hash and the recorded head. With "
        "--anchors, also that every anchor (a signed copy of an earlier head, kept off the "
        "hub) still holds: an entry it names is there with the hash it names.",
    )
    verify.add_argument("--anchors", type=Path, metavar="FILE", help="an anchors file")
    verify.add_argument(
        "--anchor-key",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="the audit key's public half (repeatable: old keys too)",
    )
    verify.set_defaults(run=_run_audit_verify)
    keygen = actions.add_parser(
        "keygen",
        help="make the hub's audit key (Ed25519) that signs anchors",
        description="Writes the private key to FILE (mode 0600) and its public half to "
        "FILE.pub; give the public half to whoever keeps the anchors.",
    )
    keygen.add_argument("file", type=Path, metavar="FILE")
    keygen.set_defaults(run=_run_audit_keygen)
    anchor = actions.add_parser(
        "anchor",
        parents=[db_parent()],
        help="sign the chain's head and append it to an anchors file (run it from a timer)",
        description="Checks the chain, signs its head with the audit key and appends the "
        "anchor as one JSON line to --out; also prints it (into the journal under systemd). "
        "Ship the file off the hub: an anchor is worth what the place it is kept is.",
    )
    anchor.add_argument("--key", type=Path, required=True, metavar="FILE", help="audit key")
    anchor.add_argument("--out", type=Path, required=True, metavar="FILE", help="anchors file")
    anchor.set_defaults(run=_run_audit_anchor)
    listing = actions.add_parser(
        "list",
        parents=[db_parent()],
        help="entries, newest first, with their reasons (reading the log is audited)",
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--account", help="only this account (hub user id, or os:NAME)")
    listing.add_argument("--action", help="only this action (trace, login_failed, ...)")
    listing.add_argument("--since", type=time_arg, help="from this time (RFC 3339)")
    listing.add_argument("--until", type=time_arg, help="until this time (RFC 3339)")
    utc_option(listing)
    listing.set_defaults(run=_run_audit_list)


def _run_audit_verify(args: argparse.Namespace) -> int:
    anchors: list[Anchor] = []
    keys = None
    if args.anchors is not None:
        if not args.anchor_key:
            raise UsageError("--anchors needs --anchor-key (the audit key's public half)")
        try:
            keys = Ed25519Keyring.from_pem_files(args.anchor_key)
            lines = args.anchors.read_text(encoding="utf-8").splitlines()
            anchors = [Anchor.from_line(line) for line in lines if line.strip()]
        except (OSError, ValueError) as exc:
            raise UsageError(f"--anchors/--anchor-key: {exc}") from None
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        check, anchor_problem = AccessControlledStore(store, cli_principal()).verify_audit(
            datetime.now(UTC), anchors, keys
        )
    if not check.ok:
        where = "" if check.first_bad_id is None else f" at entry {check.first_bad_id}"
        print(f"audit log BROKEN{where}: {check.problem}")
        print(f"{check.entries} entries check good before it (last good hash {check.head_hash})")
        return 1
    if anchor_problem is not None:
        print(f"audit log BROKEN: {anchor_problem}")
        return 1
    held = f", {len(anchors)} anchors hold" if anchors else ""
    print(f"audit log intact: {check.entries} entries (head {check.head_hash}){held}")
    return 0


def _run_audit_keygen(args: argparse.Namespace) -> int:
    public = args.file.with_name(args.file.name + ".pub")
    if args.file.exists() or public.exists():
        raise UsageError(f"{args.file} or {public} exists: an audit key is never replaced")
    signer = Ed25519Signer.generate()
    write_atomic(args.file, signer.private_pem(), mode=0o600)
    public.write_bytes(signer.public_pem())
    print(f"wrote the audit key {signer.key_id} to {args.file} (mode 0600) and {public}")
    return 0


def _run_audit_anchor(args: argparse.Namespace) -> int:
    try:
        signer = Ed25519Signer.from_pem_file(args.key)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--key: {exc}") from None
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        try:
            anchor = AccessControlledStore(store, cli_principal()).audit_anchor(
                signer, datetime.now(UTC)
            )
        except ValueError as exc:
            print(f"not anchored: {exc}", file=sys.stderr)
            return 1
    line = anchor.to_line()
    with args.out.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())
    print(f"audit anchor {line}")
    return 0


def _run_audit_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    query = AuditQuery(account=args.account, action=args.action, since=args.since, until=args.until)
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        view = AccessControlledStore(store, cli_principal()).audit_log(
            args.limit, datetime.now(UTC), query
        )
    entries = view.entries
    rows = [
        [
            str(e.id),
            shown_time(e.at, args),
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
        help=f"keep this many days (default {DEFAULT_RETENTION_DAYS})",
    )
    parser.set_defaults(run=_run_purge)


def _run_purge(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_store(args.db, args.vault_key, must_exist=True) as store:
        counts = purge_expired(store, now, args.retention_days, by=cli_principal())
    print(
        f"purged everything older than {format_rfc3339(retention_cutoff(now, args.retention_days))}"
        f": {counts['scans']} scans, {counts['dead_letters']} dead letters, "
        f"{counts['batches']} batch ids (the audit log is kept)"
    )
    return 0
