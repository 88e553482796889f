"""`card` and `card-revoke`: visitor cards, printed and revoked.

    python -m provisioning card --name "Rơ Châm H'Hen" --issuer "Trung tâm Y tế" --out card.pdf
    python -m provisioning card --csv visitors.csv --issuer "Trung tâm Y tế" --out sheet.pdf
    python -m provisioning card-revoke --id 7QK2M9XG4B --publish-to     # the recorded broker

Signing and the registry are `provisioning.fleet`'s; the printed card is
`provisioning.card_print`'s; the list a revocation publishes is `doorscan.wire.CardRevocations`.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from doorscan.cards import DEFAULT_VALID_DAYS, MAX_VALID_DAYS, CardSigner
from doorscan.errors import Refusal
from provisioning.card_print import DEFAULT_RETENTION_DAYS, PrintedCard, card_image, save_cards
from provisioning.cli_common import (
    Commands,
    add_publish_to,
    publish_now,
    publish_options,
    publish_to_target,
)
from provisioning.fleet import (
    FleetHome,
    InvalidInput,
    check_card_output,
    issue_card,
    render_card,
    today_vn,
)

__all__ = ["MAX_SHEET_CARDS", "register"]

MAX_SHEET_CARDS = 1000
"""Cards printed from one CSV: a sheet run, not a registry import."""


@dataclass(frozen=True)
class _CardRequest:
    name: str
    contact: str


def _card_requests(args: argparse.Namespace) -> list[_CardRequest]:
    """The cards asked for: one (--name), or one per row of --csv (header: name,contact)."""
    if args.csv is None:
        return [_CardRequest(args.name, args.contact)]
    try:
        with args.csv.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"--csv {args.csv}: {exc}") from None
    if not rows or "name" not in rows[0]:
        raise InvalidInput(f"--csv {args.csv}: a header row with a name column (and contact)")
    if len(rows) > MAX_SHEET_CARDS:
        raise InvalidInput(f"--csv {args.csv}: at most {MAX_SHEET_CARDS} cards at once")
    requests = [_CardRequest(r.get("name") or "", r.get("contact") or "") for r in rows]
    for line, request in enumerate(requests, start=2):
        try:
            CardSigner.check_name(request.name)
        except Refusal as refusal:
            raise InvalidInput(f"--csv {args.csv} line {line}: {refusal.reason}") from None
    return requests


def _card(args: argparse.Namespace, home: FleetHome) -> int:
    if (args.name is None) == (args.csv is None):
        raise InvalidInput("give --name (one card) or --csv FILE (a sheet)")
    if args.csv is not None and (args.out is None or args.out.suffix.lower() != ".pdf"):
        raise InvalidInput("--csv prints a sheet: give --out FILE.pdf")
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        raise InvalidInput(f"--valid-days: 1 to {MAX_VALID_DAYS}")
    if args.out is not None:
        check_card_output(args.out)  # before a card id is spent on a bad file name
    requests = _card_requests(args)  # every row checked before any card is issued
    signer = home.signer()
    issued = today_vn()
    expires = issued + timedelta(days=args.valid_days)
    printed: list[PrintedCard] = []
    with home.registry() as registry:
        for request in requests:
            card, text = issue_card(
                signer, registry, request.name, request.contact, issued, expires
            )
            printed.append(
                PrintedCard(
                    text, card.name, card.card_id, args.issuer, expires, args.retention_days
                )
            )
            print(
                f"card {card.card_id} for {card.name}, issued {card.issued:%Y-%m-%d}, "
                f"valid through {expires:%Y-%m-%d}"
            )
    out = args.out if args.out is not None else home.cards_dir / f"{printed[0].card_id}.png"
    if out.suffix.lower() == ".svg":
        render_card(printed[0].text, out)  # the QR alone, for a layout of one's own
    else:
        pages = save_cards([card_image(c) for c in printed], out)
        print(f"{len(printed)} card(s) on {pages} page(s)")
    print(f"wrote {out}")
    return 0


def _register_card(commands: Commands) -> None:
    cmd = commands.add_parser(
        "card",
        help="issue and print signed visitor cards (one, or a sheet from a CSV)",
        description="A printed card (PNG or PDF) shows the name, the card number, the issuing "
        "office, the expiry date, the QR and what a door records; .svg writes the QR alone. "
        "--csv FILE prints a sheet (A4, 10 cards a page) from a CSV with a header row "
        "name,contact.",
    )
    cmd.add_argument("--name", help="the visitor's name, as it will show")
    cmd.add_argument(
        "--contact", default="", help="phone or address; kept in the registry, not on the card"
    )
    cmd.add_argument("--csv", type=Path, metavar="FILE", help="one card per row: name,contact")
    cmd.add_argument(
        "--issuer", default="", help="the issuing office, printed on the card (e.g. the CDC)"
    )
    cmd.add_argument(
        "--retention-days",
        type=int,
        default=DEFAULT_RETENTION_DAYS,
        help="how long the hub keeps check-ins, printed on the card (default %(default)s)",
    )
    cmd.add_argument(
        "--valid-days",
        type=int,
        default=DEFAULT_VALID_DAYS,
        help="the card is refused after this many days (default %(default)s)",
    )
    cmd.add_argument(
        "--out", type=Path, help="FILE.png, FILE.pdf or FILE.svg (default HOME/cards/ID.png)"
    )
    cmd.set_defaults(handler=_card)


def _card_revoke(args: argparse.Namespace, home: FleetHome) -> int:
    target = publish_to_target(args, home)
    with home.registry() as registry:
        revocations = registry.revoke_card(args.id, today_vn(), datetime.now(UTC))
        venues, units = registry.venues(), registry.units()
    print(
        f"card {args.id} revoked from {today_vn():%Y-%m-%d}; revocation list version "
        f"{revocations.version} ({len(revocations.revoked)} cards)"
    )
    if target is not None:
        publish_now(target, home, venues, units, revocations)
    else:
        print("publish it (`publish` or --publish-to) so that doors and the hub refuse the card")
    return 0


def _register_card_revoke(commands: Commands) -> None:
    cmd = commands.add_parser(
        "card-revoke",
        parents=[publish_options()],
        help="revoke a visitor card: doors light red for it once they have the list",
        description="Marks the card revoked from today (Vietnam day) and, with --publish-to, "
        "publishes the fleet's revocation list retained: every unit takes it at its next "
        "connect, keeps it across restarts and refuses the card; the hub refuses scans of it "
        "from that day.",
    )
    cmd.add_argument("--id", required=True, help="the card number printed on the card")
    add_publish_to(cmd, "publish the list now")
    cmd.set_defaults(handler=_card_revoke)


def register(commands: Commands) -> None:
    _register_card(commands)
    _register_card_revoke(commands)
