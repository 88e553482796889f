"""Hostile QR contents, rendered with segno and read by the real decoders at a real door.

Every one must light red with a reason, store nothing, and leave the door working.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import segno
from gpiozero.pins.mock import MockFactory
from PIL import Image

from device.clock import ManualClock
from device.debounce import Debounce
from device.decoders import make_decoder
from device.indicators import Feedback, Indicators
from device.journal import ScanJournal
from device.scanner import Scanner
from doorscan.cards import CardSigner
from doorscan.synthetic import cccd_text, make_people
from tests.reliability import FiguresRecorder

T0 = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
SIGNER = CardSigner.generate()
PERSON = make_people(1, seed=43)[0]
GOOD = cccd_text(PERSON)


def _frame(content: str | bytes, *, error: str = "m", scale: int = 4) -> np.ndarray:
    """The code on a grey wall; bytes are written as they are (byte mode)."""
    if isinstance(content, bytes):
        code = segno.make(content, error=error, mode="byte", micro=False)
    else:
        code = segno.make(content, error=error, encoding="utf-8", micro=False)
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=scale, border=4)
    image = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
    frame = np.full((max(480, image.shape[0] + 40), max(640, image.shape[1] + 40)), 150, np.uint8)
    frame[20 : 20 + image.shape[0], 20 : 20 + image.shape[1]] = image
    return frame


def _flip_one_byte(card: str) -> bytes:
    raw = bytearray(card.encode("utf-8"))
    raw[len(raw) // 3] ^= 0x01  # a single bit of one byte in the middle of the card
    return bytes(raw)


CARD = SIGNER.issue("Nguyễn Thị Hoa", issued=T0.date())
HOSTILE: list[tuple[str, str | bytes, dict[str, object]]] = [
    ("largest QR, version 40, 2953 bytes", "A" * 2953, {"error": "l", "scale": 3}),
    ("ANSI escape in a name", GOOD.replace(PERSON.name, "\x1b[2J\x1b[31mRED"), {}),
    ("control character", GOOD.replace("|Nam|", "|Nam\x00|").replace("|Nữ|", "|Nữ\x00|"), {}),
    ("SQL injection", "1'; DROP TABLE scans; --", {}),
    (
        "SQL injection in a CCCD name",
        GOOD.replace(PERSON.name, "Robert'); DROP TABLE scans;--"),
        {},
    ),
    ("JSON injection", '{"v":1,"schema":"doorscan.ack","stored":["*"]}', {}),
    ("URL", "https://example.org/login?next=%2F", {}),
    ("invalid UTF-8 bytes", b"064090123456||Nguy\xe1\xbb|01011990|Nam|x|15082021", {}),
    ("Latin-1 bytes", "Võ Anh".encode("latin-1"), {}),
    ("CCCD born on 31 February", GOOD.replace(f"{PERSON.birth:%d%m%Y}", "31021990"), {}),
    ("CCCD issued in the future", GOOD.replace(f"{PERSON.issued:%d%m%Y}", "01012031"), {}),
    ("CCCD number of 11 digits", GOOD.replace(PERSON.id_number, PERSON.id_number[:-1]), {}),
    ("CCCD number of 13 digits", GOOD.replace(PERSON.id_number, PERSON.id_number + "7"), {}),
    ("visitor card with one flipped byte", _flip_one_byte(CARD), {}),
    ("visitor card from another fleet", CardSigner.generate().issue("An", issued=T0.date()), {}),
    ("empty code", " ", {}),
]


@pytest.fixture(params=["zxing", "zbar"])
def door(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Scanner, ScanJournal, str]]:
    clock = ManualClock(T0)
    with (
        ScanJournal(tmp_path / "journal.db") as journal,
        Indicators(pin_factory=MockFactory()) as leds,
    ):
        scanner = Scanner(
            unit_id="door-1",
            venue_id="hospital",
            decoder=make_decoder(request.param),
            journal=journal,
            indicators=leds,
            debounce=Debounce(300, clock.monotonic),
            clock=clock,
            card_keys=SIGNER.keyring(),
            repeat_hold_s=0,
        )
        yield scanner, journal, request.param


def test_hostile_codes_light_red_and_store_nothing(
    door: tuple[Scanner, ScanJournal, str], reliability_figures: FiguresRecorder
) -> None:
    scanner, journal, decoder = door
    refused = 0
    for name, content, options in HOSTILE:
        outcomes = scanner.process(_frame(content, **options))  # type: ignore[arg-type]
        assert [o.feedback for o in outcomes] == [Feedback.REFUSED], name
        assert outcomes[0].reason, name
        refused += 1
    stored_from_hostile = journal.backlog()
    assert stored_from_hostile == 0
    # The door still works for the next honest visitor.
    assert [o.feedback for o in scanner.process(_frame(GOOD))] == [Feedback.ACCEPTED]
    assert [o.feedback for o in scanner.process(_frame(CARD))] == [Feedback.ACCEPTED]
    reliability_figures.record(
        f"hostile QR codes at a door ({decoder})",
        runs=1,
        bad_inputs_tried=len(HOSTILE),
        bad_inputs_refused=refused,
        scans_stored=stored_from_hostile,
    )
