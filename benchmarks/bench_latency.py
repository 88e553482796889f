"""Frame → durable record → indicator call, through the unit's real hot path.

`Scanner.process` runs with its production parts: the project's zxing decoder, the
payload parsers (with a card keyring, so visitor cards are verified), the debounce,
a `ScanJournal` on disk (WAL, synchronous=FULL: the commit is fsynced) and the real
`Indicators` on gpiozero's MockFactory. Each frame shows a different person, so
every one is judged, committed and shown (none is "already in").

Two end points are timed from handing in the frame:

* the `Indicators.show()` call (the issue's "indicator call"): stamped by a subclass
  of the real `Indicators` that notes the time and then does exactly what the
  original does;
* the buzzer pin switching on (the beep the visitor hears), from the MockPin's own
  timestamped history (`clear_states()` just before the frame): this adds the
  player thread's wake-up.

Baseline: a bare ``zxingcpp.read_barcodes`` (every default) of the same frame, timed
just before it; the project's decode of the same frame alone is shown too, to say
where the time goes (the rest is parsing, the card signature check and the commit).
Goal: p99 of frame → indicator call ≤ 10 ms.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import zxingcpp
from gpiozero.pins.mock import MockFactory

from benchmarks.report import Figure, Result, Samples
from benchmarks.scenes import card_signer, code_frame, code_texts, doorway_frame
from device.clock import SystemClock, UnitClock
from device.debounce import Debounce
from device.decoders import ZxingDecoder
from device.indicators import Feedback, Indicators
from device.journal import ScanJournal
from device.scanner import Scanner

__all__ = ["run"]

SUBJECT = "Frame → record → indicator"
SIZE = (1280, 720)
GOAL_P99_MS = 10.0
PINS = {"green": 17, "red": 27, "buzzer": 22}


class _StampedIndicators(Indicators):
    """The real indicators, noting when the scanner asked them to show something."""

    shown_at_ns: int | None = None
    shown: Feedback | None = None

    def show(self, feedback: Feedback) -> None:
        self.shown_at_ns = time.perf_counter_ns()
        self.shown = feedback
        super().show(feedback)


def run(quick: bool, tmp: Path) -> Result:
    count = 15 if quick else 300
    texts = code_texts(count, seed=77)
    frames = [code_frame(text, SIZE) for _, text in texts]
    empty = doorway_frame(SIZE, seed=5)
    factory = MockFactory()
    to_show: list[int] = []
    to_beep: list[int] = []
    bare_code: list[int] = []
    decode_only: list[int] = []
    no_code: list[int] = []
    bare_empty: list[int] = []
    clock = UnitClock(SystemClock(), ntp_synced=lambda: True)
    with (
        tempfile.TemporaryDirectory(dir=tmp) as folder,
        ScanJournal(Path(folder) / "journal.db") as journal,
        ZxingDecoder() as decoder,
        _StampedIndicators(
            PINS["green"], PINS["red"], PINS["buzzer"], pin_factory=factory
        ) as indicators,
    ):
        buzzer = factory.pin(PINS["buzzer"])
        scanner = Scanner(
            unit_id="bench-door",
            venue_id="bench-venue",
            decoder=decoder,
            journal=journal,
            indicators=indicators,
            debounce=Debounce(300.0, clock.monotonic),
            clock=clock,
            card_keys=card_signer().keyring(),
        )
        for _ in range(3):  # warm-up: the first decode and the first commit are slower
            scanner.process(empty)
        for frame in frames:
            start = time.perf_counter_ns()
            zxingcpp.read_barcodes(frame)
            bare_code.append(time.perf_counter_ns() - start)
            start = time.perf_counter_ns()
            decoder.decode(frame)  # stateless: the scanner below decodes it afresh
            decode_only.append(time.perf_counter_ns() - start)
            _wait_beep_over(buzzer)
            indicators.shown_at_ns = None
            buzzer.clear_states()
            start = time.perf_counter_ns()
            outcomes = scanner.process(frame)
            if indicators.shown_at_ns is None or indicators.shown is not Feedback.ACCEPTED:
                raise RuntimeError(f"a code frame was not accepted: {outcomes!r}")
            to_show.append(indicators.shown_at_ns - start)
            beep_ns = _wait_pin_on(buzzer)
            if beep_ns is not None:
                # MockPin times its states on time.monotonic; clear_states() ran just
                # before `start`, so this slightly overstates the delay, never understates.
                to_beep.append(beep_ns)
            # A door mostly sees nobody: an empty frame between people, timed as well.
            start = time.perf_counter_ns()
            zxingcpp.read_barcodes(empty)
            bare_empty.append(time.perf_counter_ns() - start)
            start = time.perf_counter_ns()
            scanner.process(empty)
            no_code.append(time.perf_counter_ns() - start)
        recorded = journal.backlog()
    if recorded != count:
        raise RuntimeError(f"{recorded} scans in the journal after {count} code frames")
    show, beep = Samples(tuple(to_show)), Samples(tuple(to_beep))
    bare, idle, bare_idle = (
        Samples(tuple(bare_code)),
        Samples(tuple(no_code)),
        Samples(tuple(bare_empty)),
    )
    decode = Samples(tuple(decode_only))
    miss_note = (
        f"the decode of a 1280×720 frame alone has p99 {decode.p99_ms:.3g} ms here (p50"
        f" {decode.median_ms:.3g} ms); the rest, p50 {show.median_ms - decode.median_ms:.2g}"
        " ms, is mostly the fsynced commit (see Journal commit), with parsing and the card"
        " signature check"
        if show.p99_ms > GOAL_P99_MS
        else ""
    )
    figures = [
        Figure(SUBJECT, "code frame → show() call, p50", show.median_ms, "ms",
               bare.median_ms, "bare zxing-cpp decode, p50"),
        Figure(SUBJECT, "code frame → show() call, p99", show.p99_ms, "ms",
               bare.p99_ms, "bare zxing-cpp decode, p99", f"p99 ≤ {GOAL_P99_MS:g} ms",
               show.p99_ms <= GOAL_P99_MS, miss_note),
        Figure(SUBJECT, "of which: project zxing decode alone, p50", decode.median_ms, "ms",
               bare.median_ms, "bare zxing-cpp decode, p50"),
        Figure(SUBJECT, "of which: project zxing decode alone, p99", decode.p99_ms, "ms",
               bare.p99_ms, "bare zxing-cpp decode, p99"),
        Figure(SUBJECT, "code frame → buzzer pin on, p50", beep.median_ms, "ms",
               bare.median_ms, "bare zxing-cpp decode, p50"),
        Figure(SUBJECT, "code frame → buzzer pin on, p99", beep.p99_ms, "ms",
               bare.p99_ms, "bare zxing-cpp decode, p99"),
        Figure(SUBJECT, "empty frame → done (nothing shown), p50", idle.median_ms, "ms",
               bare_idle.median_ms, "bare zxing-cpp decode, p50"),
        Figure(SUBJECT, "empty frame → done (nothing shown), p99", idle.p99_ms, "ms",
               bare_idle.p99_ms, "bare zxing-cpp decode, p99"),
    ]  # fmt: skip
    raw: dict[str, Any] = {
        "frames": count,
        "size": list(SIZE),
        "to_show": show.summary(),
        "to_buzzer_on": beep.summary(),
        "bare_zxing_code_frame": bare.summary(),
        "project_zxing_decode_code_frame": decode.summary(),
        "empty_frame_process": idle.summary(),
        "bare_zxing_empty_frame": bare_idle.summary(),
    }
    text = __doc__.split("\n", 1)[1] + (
        f"\n{count} code frames ({SIZE[0]}×{SIZE[1]}, CCCD, health and visitor-card codes in"
        " turn, 6 px per module), each followed by an empty-doorway frame."
    )
    return Result(figures, raw, text)


def _wait_beep_over(buzzer: Any, timeout_s: float = 2.0) -> None:
    """Wait until the previous pattern's beep is over, so the next beep is a new change."""
    deadline = time.monotonic() + timeout_s
    while buzzer.state and time.monotonic() < deadline:
        time.sleep(0.005)


def _wait_pin_on(pin: Any, timeout_s: float = 1.0) -> int | None:
    """Nanoseconds from the pin's clear_states() to its first switch on, if it came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for state in pin.states[1:]:
            if state.state:
                return int(state.timestamp * 1e9)
        time.sleep(0.001)
    return None
