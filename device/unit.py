"""A whole door unit built from its config: the rooms wired together, and the frame loop.

`Unit.from_config` picks the real parts (camera, gpiozero pins, paho client); tests
and the demo pass their own frame source, pin factory or clock. The loop reads a
frame, hands it to the scanner, and keeps going until told to stop or the frame
source runs dry (an image folder).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType
from typing import Any

from device.clock import Clock, SystemClock
from device.config import UnitConfig
from device.debounce import Debounce
from device.decoders import Decoder, make_decoder
from device.frames import FrameSource, ImageFileSource, Picamera2Source
from device.indicators import Feedback, Indicators
from device.journal import ScanJournal
from device.mqtt_sync import ClientFactory, MqttSync, paho_client_factory
from device.scanner import Scanner
from device.state import UnitState
from doorscan.cards import CardKeyring

__all__ = ["Unit", "frame_source_for"]

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0
KEEP_SETTLED = timedelta(days=1)


def frame_source_for(config: UnitConfig) -> FrameSource:
    """The frame source the config names (picamera2 is imported only here, lazily)."""
    frames = config.frames
    if frames.source == "files":
        assert frames.path is not None  # the config validator guarantees it
        return ImageFileSource([frames.path], loop=frames.loop)
    return Picamera2Source(frames.width, frames.height, frames.fps)


class Unit:
    """Everything one door needs; a context manager that closes its parts in order."""

    def __init__(
        self,
        config: UnitConfig,
        *,
        frames: FrameSource | None = None,
        decoder: Decoder | None = None,
        clock: Clock | None = None,
        pin_factory: Any = None,
        client_factory: ClientFactory = paho_client_factory,
        sync_clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        # The lights come first: if the journal cannot be opened the door must still say so.
        self.indicators = Indicators(
            config.pins.green_led, config.pins.red_led, config.pins.buzzer, pin_factory=pin_factory
        )
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            self.journal = ScanJournal(config.data_dir / "journal.db")
            self.state = UnitState(config.data_dir / "state.json")
        except Exception:
            log.exception("cannot open the unit's data in %s", config.data_dir)
            self.indicators.show(Feedback.FAULT)
            self.indicators.wait_idle(2.0)
            self.indicators.close()
            raise
        # Built on first use: a unit driven frame by frame (the demo, tests) never opens a camera.
        self._frames = frames
        self.decoder = decoder if decoder is not None else make_decoder(config.decoder)
        self.sync = MqttSync(
            config.unit_id,
            self.journal,
            config.broker,
            config.sync,
            # Network timeouts run on real time even when a test or the demo drives the
            # scan clock by hand.
            clock=sync_clock or SystemClock(),
            client_factory=client_factory,
            last_scan_at=self.journal.last_scan_at,
        )
        card_keys = CardKeyring.from_pem_files(config.card_keys) if config.card_keys else None
        self.scanner = Scanner(
            unit_id=config.unit_id,
            venue_id=config.venue_id,
            decoder=self.decoder,
            journal=self.journal,
            indicators=self.indicators,
            debounce=Debounce(config.debounce_s, self.clock.monotonic),
            clock=self.clock,
            card_keys=card_keys,
            repeat_hold_s=config.repeat_hold_s,
            is_online=lambda: self.sync.online,
            on_recorded=lambda scan: self.sync.notify(),
            count=self.state.increment,
        )
        self._stop = threading.Event()
        self._closed = False
        self._next_housekeeping = self.clock.monotonic() + HOUSEKEEPING_EVERY_S

    @property
    def frames(self) -> FrameSource:
        if self._frames is None:
            self._frames = frame_source_for(self.config)
        return self._frames

    def start(self) -> Unit:
        self.sync.start()
        return self

    def stop(self) -> None:
        """Ask the frame loop to end after the current frame (safe from any thread)."""
        self._stop.set()

    def run(self, max_frames: int | None = None) -> int:
        """Scan until stopped, the frames run out, or `max_frames`; return frames seen."""
        seen = 0
        while not self._stop.is_set() and (max_frames is None or seen < max_frames):
            try:
                frame = self.frames.read()
            except Exception:
                # Issue 7 adds retry with backoff; for now the fault is shown and the loop ends.
                log.exception("the frame source failed")
                self.indicators.show(Feedback.FAULT)
                raise
            if frame is None:
                break
            self.scanner.process(frame)
            seen += 1
            if self.clock.monotonic() >= self._next_housekeeping:
                self.housekeeping()
        return seen

    def housekeeping(self) -> None:
        """Once a minute: save the counters, drop acked scans older than the keep period."""
        self._next_housekeeping = self.clock.monotonic() + HOUSEKEEPING_EVERY_S
        try:
            self.state.flush()
            # The ministry's rule for readers: keep at least a day of what the unit recorded.
            self.journal.purge_settled(self.clock.now() - KEEP_SETTLED)
        except Exception:
            log.exception("housekeeping failed; scanning goes on")

    def close(self) -> None:
        """Stop sending, close every part; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.sync.close()
        if self._frames is not None:
            self._frames.close()
        close_decoder = getattr(self.decoder, "close", None)
        if callable(close_decoder):
            close_decoder()
        self.indicators.close()
        self.state.close()
        self.journal.close()

    def __enter__(self) -> Unit:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
