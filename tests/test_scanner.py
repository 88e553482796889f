"""The scanner's hot path on real parts: decoder, journal, debounce, gpiozero mock pins."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.clock import ManualClock
from device.debounce import Debounce
from device.decoders import make_decoder
from device.indicators import Feedback, Indicators
from device.journal import JournalError, ScanJournal
from device.scanner import Scanner
from doorscan.cards import CardSigner
from doorscan.synthetic import blank_frame, cccd_text, health_text, make_people, render_frame
from doorscan.wire import Scan

T0 = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
PEOPLE = make_people(4, seed=31)


class Door:
    """A scanner with its real parts, and a log of the order in which things happened."""

    def __init__(self, tmp_path: Path, decoder: str, *, online: bool = True) -> None:
        self.events: list[str] = []
        self.clock = ManualClock(T0)
        self.journal = ScanJournal(tmp_path / "journal.db")
        self.leds = Indicators(pin_factory=MockFactory())
        self.online = online
        self.signer = CardSigner.generate()
        door = self

        class LoggedJournal:
            def record(self, scan: Scan) -> None:
                door.journal.record(scan)
                door.events.append("committed")

        class LoggedIndicators:
            def show(self, feedback: Feedback) -> None:
                door.events.append(feedback.name)
                door.leds.show(feedback)

        self.scanner = Scanner(
            unit_id="door-1",
            venue_id="hospital",
            decoder=make_decoder(decoder),  # type: ignore[arg-type]
            journal=LoggedJournal(),
            indicators=LoggedIndicators(),
            debounce=Debounce(300, self.clock.monotonic),
            clock=self.clock,
            card_keys=self.signer.keyring(),
            is_online=lambda: self.online,
        )

    def show(self, text: str, after_s: float = 10) -> list[Feedback]:
        self.clock.advance(after_s)
        return [o.feedback for o in self.scanner.process(render_frame(text))]

    def close(self) -> None:
        self.leds.close()
        self.journal.close()


@pytest.fixture(params=["zxing", "zbar"])
def door(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Door]:
    opened = Door(tmp_path, request.param)
    yield opened
    opened.close()


def test_green_only_after_the_commit(door: Door) -> None:
    assert door.show(cccd_text(PEOPLE[0])) == [Feedback.ACCEPTED]
    assert door.events == ["committed", "ACCEPTED"]
    [scan] = door.journal.pending(10)
    assert scan.qr_text == cccd_text(PEOPLE[0]) and scan.venue_id == "hospital"
    assert scan.scanned_at == T0.replace(second=10)


def test_same_person_within_the_window_is_already_in_and_not_recorded(door: Door) -> None:
    person = PEOPLE[1]
    assert door.show(cccd_text(person)) == [Feedback.ACCEPTED]
    # Their health QR carries the same ID number: the same person, so no second record.
    assert door.show(health_text(person), after_s=60) == [Feedback.ALREADY_IN]
    assert door.show(cccd_text(person), after_s=60) == [Feedback.ALREADY_IN]
    assert door.journal.backlog() == 1
    assert door.show(cccd_text(person), after_s=301) == [Feedback.ACCEPTED]
    assert door.journal.backlog() == 2


def test_a_code_held_in_view_is_handled_once(door: Door) -> None:
    text = cccd_text(PEOPLE[2])
    assert door.show(text) == [Feedback.ACCEPTED]
    for _ in range(30):  # two seconds of frames at 15 frames/s
        assert door.show(text, after_s=1 / 15) == []
    assert door.events == ["committed", "ACCEPTED"]


def test_refused_codes_light_red_and_record_nothing(door: Door) -> None:
    forged = door.signer.issue("Nguyễn Văn An", issued=T0.date()).replace("An|", "Ân|")
    for text in ("https://example.org", "064090123456||X|01011990|Nam|a|15082031", forged):
        outcomes = door.scanner.process(render_frame(text))
        door.clock.advance(10)
        assert [o.feedback for o in outcomes] == [Feedback.REFUSED]
        assert outcomes[0].reason
    assert door.journal.backlog() == 0


def test_a_visitor_card_is_accepted(door: Door) -> None:
    card = door.signer.issue("Rơ Châm H'Hen", issued=T0.date())
    assert door.show(card) == [Feedback.ACCEPTED]


def test_offline_feedback_when_the_broker_is_away(door: Door) -> None:
    door.online = False
    assert door.show(cccd_text(PEOPLE[3])) == [Feedback.RECORDED_OFFLINE]
    assert door.journal.backlog() == 1


def test_a_full_disk_shows_the_fault_and_never_green(door: Door) -> None:
    door.journal.set_max_bytes(1)  # the file may not grow: fill what room is left
    with pytest.raises(JournalError):
        for i in range(100_000):
            filler = Scan(scan_id=f"filler-{i:05d}", venue_id="v", scanned_at=T0, qr_text="x")
            door.journal.record(filler)
    assert door.show(cccd_text(PEOPLE[0])) == [Feedback.FAULT]
    assert "ACCEPTED" not in door.events
    door.journal.set_max_bytes(None)  # space is back: the same person is recorded now
    assert door.show(cccd_text(PEOPLE[0]), after_s=5) == [Feedback.ACCEPTED]


def test_nothing_in_view_is_silent(door: Door) -> None:
    assert door.scanner.process(blank_frame()) == []
    assert door.events == []
