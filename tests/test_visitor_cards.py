"""Cards a person can carry: they expire, they can be revoked, and they print as real cards.

Real parts throughout: cards signed by `provisioning card`, read back from the printed PNG
by the unit's own decoder, shown to a `Scanner` with both decoders and gpiozero's mock
pins (the red LED is looked at), the revocation list published retained by
`provisioning card-revoke --publish-to` to a real Mosquitto, taken by a real
`python -m device run` process, and judged by the hub's ingest on both backends.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from device.card_revocations import CardRevocationList
from device.indicators import Feedback
from device.journal import ScanJournal
from device.state import UnitState
from doorscan.cards import CardKeyring, CardSigner, parse_card
from doorscan.errors import Refusal
from doorscan.localbroker import LocalBroker
from doorscan.sealing import load_private_key, open_sealed
from doorscan.synthetic import blank_frame, render_frame
from doorscan.wire import (
    CardRevocations,
    RevokedCard,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_card_revocations,
    topic_scans,
)
from hub.ingest import Ingestor
from provisioning.cli import main as provisioning
from tests.hubstore import open_store
from tests.test_provisioning import decode_png, keyring
from tests.test_scanner import Door
from tests.waiting import wait_for

T0 = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)  # the scanner tests' clock: 08:00 in Vietnam


def ok(home: Path, command: str) -> None:
    assert provisioning(["--home", str(home), *shlex.split(command)]) == 0, command


def revocations(version: int, **revoked_on: date) -> CardRevocations:
    return CardRevocations(
        version=version,
        issued_at=T0,
        revoked=[RevokedCard(card_id=c, revoked_on=d) for c, d in revoked_on.items()],
    )


# -- the rule -------------------------------------------------------------------------------


def test_a_card_is_good_through_its_expiry_day_and_refused_after() -> None:
    signer = CardSigner.generate()
    text = signer.issue("Rơ Châm H'Hen", date(2025, 1, 1), expires=date(2025, 12, 31))
    assert text.startswith("DSC2|")
    ring = signer.keyring()
    assert parse_card(text, ring, today=date(2025, 12, 31)).expires == date(2025, 12, 31)
    with pytest.raises(Refusal) as expired:
        parse_card(text, ring, today=date(2026, 1, 1))
    assert expired.value.code == "card_expired" and "31/12/2025" in expired.value.reason
    # Moving the expiry breaks the signature: the date is signed.
    moved = text.replace("|20251231|", "|20351231|")
    with pytest.raises(Refusal, match="altered or forged"):
        parse_card(moved, ring, today=date(2026, 1, 1))


def test_a_first_format_card_expires_a_year_after_issue() -> None:
    signer = CardSigner.generate()
    body = f"DSC1|{signer.key_id}|7QK2M9XG4B|Lê Thị Hà|20250301|"
    old = body + base64.urlsafe_b64encode(signer.sign(body.encode())).decode().rstrip("=")
    ring = signer.keyring()
    assert parse_card(old, ring, today=date(2026, 3, 1)).expires == date(2026, 3, 1)
    with pytest.raises(Refusal) as expired:
        parse_card(old, ring, today=date(2026, 3, 2))
    assert expired.value.code == "card_expired"


def test_a_revoked_card_is_refused_from_its_revocation_day() -> None:
    signer = CardSigner.generate()
    text = signer.issue("Lê Thị Hà", date(2025, 1, 1))
    card_id = text.split("|")[2]
    ring = signer.keyring()
    ring.set_revoked({card_id: date(2025, 6, 1)})
    assert parse_card(text, ring, today=date(2025, 5, 31)).card_id == card_id  # before: good
    with pytest.raises(Refusal) as revoked:
        parse_card(text, ring, today=date(2025, 6, 1))
    assert revoked.value.code == "card_revoked"


# -- at the door: red ------------------------------------------------------------------------


@pytest.fixture(params=["zxing", "zbar"])
def door(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Door]:
    opened = Door(tmp_path, request.param)
    yield opened
    opened.close()


def _red_lit(door: Door) -> bool:
    """Whether the red LED's mock pin went high (and the green one did not), once the
    pattern has played: the pins' own history, as gpiozero's MockPin records it."""
    assert door.leds.wait_idle(5)
    red, green = door.leds._red.pin, door.leds._green.pin
    return any(s.state for s in red.states) and not any(s.state for s in green.states)


def test_an_expired_card_lights_red_and_records_nothing(door: Door) -> None:
    today = T0.date()
    expired = door.signer.issue(
        "Nguyễn Văn An", today - timedelta(days=400), expires=today - timedelta(days=1)
    )
    good = door.signer.issue("Lê Thị Hà", today, expires=today)
    outcomes = door.scanner.process(render_frame(expired))
    assert [o.feedback for o in outcomes] == [Feedback.REFUSED]
    assert "expired" in (outcomes[0].reason or "")
    assert _red_lit(door)
    assert door.journal.backlog() == 0
    assert door.show(good) == [Feedback.ACCEPTED]  # the control: valid through today
    assert door.journal.backlog() == 1


def test_a_revoked_card_lights_red_once_the_list_arrives(door: Door, tmp_path: Path) -> None:
    card = door.signer.issue("Rơ Châm H'Hen", T0.date())
    other = door.signer.issue("Lê Thị Hà", T0.date())
    card_id = card.split("|")[2]
    ring = door.scanner._card_keys
    assert isinstance(ring, CardKeyring)
    with UnitState(tmp_path / "state.json") as state:
        held = CardRevocationList(ring, state)
        assert held.receive(encode_message(revocations(2, **{card_id: T0.date()})))
        assert not held.receive(encode_message(revocations(1)))  # older: never undoes
        assert not held.receive(b"")  # a cleared retained message: ignored
    outcomes = door.scanner.process(render_frame(card))
    assert [o.feedback for o in outcomes] == [Feedback.REFUSED]
    assert "revoked" in (outcomes[0].reason or "") and _red_lit(door)
    assert door.show(other) == [Feedback.ACCEPTED]
    # A restart reads the list back from the state file, broker or not.
    fresh = CardKeyring([door.signer.public_key])
    with UnitState(tmp_path / "state.json") as state:
        assert CardRevocationList(fresh, state).version == 2
    assert fresh.revoked_on(card_id) == T0.date()


# -- the outsider's path: provisioning, a real broker, a real unit process ----------------------


def _card_text(home: Path, name: str, out: Path, *extra: str) -> tuple[str, str]:
    ok(
        home,
        f"card --name {shlex.quote(name)} --issuer 'CDC Gia Lai' --out {out} {' '.join(extra)}",
    )
    text = decode_png(out)
    return text, text.split("|")[2]


@pytest.mark.broker
def test_a_card_revoked_in_provisioning_lights_red_at_a_unit_even_after_an_offline_restart(
    broker: LocalBroker, tmp_path: Path
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init")
    ok(home, "add-venue --id cho-pleiku --name 'Chợ Pleiku'")
    where = f"--broker-host {broker.host} --broker-port {broker.port}"
    ok(
        home,
        f"add-device --id door-1 --venue cho-pleiku {where} "
        f"--out {tmp_path / 'unit'} --data-dir data",
    )
    lost, lost_id = _card_text(home, "Rơ Châm H'Hen", tmp_path / "lost.png")
    kept, _ = _card_text(home, "Lê Thị Hà", tmp_path / "kept.png")
    ok(home, f"card-revoke --id {lost_id} --publish-to {broker.host}:{broker.port}")

    config_path = next((tmp_path / "unit").glob("*.json"))
    config: dict[str, Any] = json.loads(config_path.read_text())
    frames = tmp_path / "unit" / "frames"
    frames.mkdir()
    Image.fromarray(blank_frame()).save(frames / "blank.png")
    config["frames"] = {"source": "files", "path": "frames", "loop": True, "pace": True, "fps": 5}
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    command = [sys.executable, "-m", "device", "run", "--config", str(config_path)]
    unit = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    state_file = tmp_path / "unit" / "data" / "state.json"
    try:
        assert wait_for(
            lambda: state_file.exists() and "card_revocations" in state_file.read_text(), 30
        )
    finally:
        unit.terminate()
        _, first_log = unit.communicate(timeout=30)
    assert unit.returncode == 0, first_log
    assert "card revocations version 1: 1 cards" in first_log

    # Offline now: the broker is gone; the unit is shown the revoked card, then a good one.
    broker.stop()
    for old in frames.iterdir():
        old.unlink()
    for n, text in enumerate((lost, kept)):
        Image.fromarray(render_frame(text)).save(frames / f"{n}a.png")
        Image.fromarray(blank_frame()).save(frames / f"{n}b.png")
    config["frames"] = {"source": "files", "path": "frames"}
    config_path.write_text(json.dumps(config))
    again = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stderr
    assert re.search(r"refused a code: the card was revoked on \d\d/\d\d/\d{4}", again.stderr)
    with ScanJournal(tmp_path / "unit" / "data" / "journal.db") as journal:
        [scan] = journal.pending(10)
    # Only the good card is recorded: sealed for the hub, so opened with the fleet's hub key.
    assert scan.sealed is not None
    hub_key = load_private_key(home / "keys" / "hub-seal.key")
    assert open_sealed(scan.sealed, hub_key) == kept
    with UnitState(state_file) as state:
        assert state.counters()["refused"] == 1


# -- at the hub ---------------------------------------------------------------------------------


def test_the_hub_refuses_scans_of_a_revoked_card_from_its_revocation_day(hub_db: str) -> None:
    signer = CardSigner.generate()
    card = signer.issue("Rơ Châm H'Hen", date(2021, 6, 1))
    card_id = card.split("|")[2]
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="cho-pleiku"))
        ingest = Ingestor(store, card_keys=signer.keyring(), now=lambda: T0, max_scans_per_minute=0)
        listed = revocations(1, **{card_id: date(2022, 1, 10)})  # 10/01 in Vietnam
        assert ingest.handle(topic_card_revocations(), encode_message(listed), retained=True) == []
        before = Scan(scan_id="scan-before-revocation", venue_id="cho-pleiku",
                      scanned_at=datetime(2022, 1, 9, 16, 0, tzinfo=UTC), qr_text=card)  # fmt: skip
        after = Scan(scan_id="scan-after-revocation", venue_id="cho-pleiku",
                     scanned_at=datetime(2022, 1, 9, 17, 30, tzinfo=UTC), qr_text=card)  # fmt: skip
        batch = ScanBatch(
            rev=7, batch_id="batch-0001", unit_id="door-1", sent_at=T0, scans=[before, after]
        )
        [reply] = ingest.handle(topic_scans("door-1"), encode_message(batch))
        ack = json.loads(reply.payload)
        assert ack["stored"] == ["scan-before-revocation"]  # 23:00 on the 9th in Vietnam
        [refused] = ack["refused"]
        assert (refused["scan_id"], refused["code"]) == ("scan-after-revocation", "card_revoked")


# -- printed cards ------------------------------------------------------------------------------


def test_a_printed_card_carries_a_qr_that_verifies_and_expires_as_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init")
    for suffix in ("png", "pdf"):
        capsys.readouterr()
        out = tmp_path / f"card.{suffix}"
        ok(
            home,
            f"card --name 'Đặng Thuỳ Trâm' --issuer 'Trung tâm Y tế Pleiku' "
            f"--valid-days 30 --out {out}",
        )
        printed = capsys.readouterr().out
        assert "valid through" in printed and f"wrote {out}" in printed
    text = decode_png(tmp_path / "card.png")  # the whole card: QR beside the printed details
    card = parse_card(text, keyring(home), today=date.today())
    assert card.name == "Đặng Thuỳ Trâm" and card.expires - card.issued == timedelta(days=30)
    with Image.open(tmp_path / "card.png") as image:
        assert image.size == (1011, 638)  # 85.6 x 54 mm at 300 dpi: the size of a CCCD
    pdf = (tmp_path / "card.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1


def test_a_sheet_prints_from_a_csv_ten_cards_a_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init")
    names = [f"Nguyễn Văn {chr(0x41 + n)}" for n in range(12)]
    sheet = tmp_path / "cards.csv"
    sheet.write_text(
        "name,contact\n" + "".join(f"{n},090512345{i % 10}\n" for i, n in enumerate(names))
    )
    ok(home, f"card --csv {sheet} --issuer 'CDC Gia Lai' --out {tmp_path / 'sheet.pdf'}")
    assert "12 card(s) on 2 page(s)" in capsys.readouterr().out
    pdf = (tmp_path / "sheet.pdf").read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 2
    capsys.readouterr()
    ok(home, "list --json")
    cards = json.loads(capsys.readouterr().out)["cards"]
    assert [c["name"] for c in cards] == names and all(c["expires"] for c in cards)
    # A bad row stops the whole sheet before any card is issued.
    sheet.write_text("name,contact\nAn,1\nBad|Name,2\n")
    assert (
        provisioning(
            ["--home", str(home), "card", "--csv", str(sheet), "--out", str(tmp_path / "x.pdf")]
        )
        == 1
    )
    assert "line 3" in capsys.readouterr().err
    ok(home, "list --json")
    assert len(json.loads(capsys.readouterr().out)["cards"]) == 12


def test_revoking_an_unknown_card_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init")
    assert provisioning(["--home", str(home), "card-revoke", "--id", "7QK2M9XG4B"]) == 1
    assert "no card '7QK2M9XG4B'" in capsys.readouterr().err


def test_the_revocation_list_is_a_wire_message(tmp_path: Path) -> None:
    listed = revocations(3, **{"7QK2M9XG4B": date(2025, 1, 2)})
    again = decode_message(encode_message(listed), CardRevocations)
    assert again.by_card() == {"7QK2M9XG4B": date(2025, 1, 2)}
    with pytest.raises(Refusal):
        decode_message(
            encode_message(listed).replace(b"7QK2M9XG4B", b"not-a-card"), CardRevocations
        )
