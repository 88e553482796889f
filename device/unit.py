"""A whole door unit built from its config: the rooms wired together, and the frame loop.

`Unit.from_config` picks the real parts (camera, gpiozero pins, paho client); tests
and the demo pass their own frame source, pin factory or clock. The loop reads a
frame, hands it to the scanner, and keeps going until told to stop or the frame
source runs dry (an image folder).

A camera that fails does not end the loop (a crash loop under systemd would only
hide the fault): the door shows FAULT once per outage, the error is logged once,
the camera is re-opened with exponential backoff (`retry_min_s` doubling up to
`retry_max_s`) and a line says when it is back. A live camera that gives no frame
(`read()` returns None) is waited for, never taken as the end; after `stall_after_s`
without a frame that too is an outage. A `read()` that blocks forever cannot be seen
from this loop: the systemd watchdog (``WatchdogSec``) restarts the unit then.

The hub's remote config (`device.remote_config`) is applied live: the debounce window
is changed in place, the buzzer asks it before each pattern (volume 0, quiet hours),
and with a `frame_rate` the loop paces itself to at most that many frames a second
(deadlines on the unit's monotonic clock, so decoding time does not slow the rate).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from device.card_revocations import CardRevocationList
from device.clock import Clock, SystemClock, UnitClock
from device.config import UnitConfig
from device.debounce import Debounce
from device.decoders import Decoder, make_decoder
from device.frames import FrameSource, open_frames
from device.indicators import Feedback, Indicators
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync, unit_client_factory
from device.remote_config import RemoteConfig, Settings
from device.scanner import Scanner
from device.sdnotify import SystemdNotifier
from device.state import UnitState
from device.update_agent import UpdateAgent
from doorscan.cards import CardKeyring
from doorscan.mqtt import ClientFactory
from doorscan.sealing import load_public_key

__all__ = ["Unit", "cpu_temp_c", "disk_free_mb", "frame_source_for"]

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0
KEEP_SETTLED = timedelta(days=1)
DECODE_RATE_WINDOW_S = 10.0
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temp_c(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C from the kernel's thermal zone; None where there is none."""
    try:
        return round(int(path.read_text(encoding="ascii").strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def disk_free_mb(path: Path) -> int | None:
    """Free space (MiB) on the file system holding `path`; None if it cannot be read."""
    try:
        return shutil.disk_usage(path).free // (1024 * 1024)
    except OSError:
        return None


def frame_source_for(config: UnitConfig) -> FrameSource:
    """The frame source the config names."""
    return open_frames(config.frames)


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
        client_factory: ClientFactory = unit_client_factory,
        sync_clock: Clock | None = None,
        frames_factory: Callable[[], FrameSource] | None = None,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        stall_after_s: float = 10.0,
        sleep: Callable[[float], object] | None = None,
        notifier: SystemdNotifier | None = None,
        status_every_s: float = 60.0,
        update_agent: UpdateAgent | None = None,
    ) -> None:
        """`frames` is used as given (never re-opened); `frames_factory` opens a source and
        is called again after a failure. With neither, the config's source is used, and a
        camera (not an image folder, whose next read simply moves past a bad file) is
        re-opened after a failure. `sleep` waits between retries (default: until stop()).
        `notifier` is told when the loop turns (the systemd watchdog); default: none.
        """
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")
        self.config = config
        self.notifier = notifier or SystemdNotifier(None)
        self.update_agent = update_agent
        self._last_scan_mono = time.monotonic()  # a restart counts as a scan: not quiet yet
        self._next_update_tick = 0.0
        self._started_mono = time.monotonic()
        self._rate_window_start = self._started_mono
        self._rate_window_frames = 0
        self.decode_rate_hz: float | None = None
        # Read before anything is opened: a missing key must not leave pins or files open.
        seal_key = load_public_key(config.seal_key) if config.seal_key else None
        # The real clock is trusted once NTP (or the hub) vouches for it. A clock that a
        # test or the demo passes in is taken as right, unless it is a UnitClock itself.
        if clock is None:
            self.clock = UnitClock(SystemClock())
        elif isinstance(clock, UnitClock):
            self.clock = clock
        else:
            self.clock = UnitClock(clock, ntp_synced=lambda: True)
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
        self._frames_factory: Callable[[], FrameSource] | None = frames_factory
        if frames is None and frames_factory is None and config.frames.source == "picamera2":
            self._frames_factory = lambda: frame_source_for(config)
        # Only an image folder ends; a live camera's None means "no frame yet".
        self._frames_end = config.frames.source == "files"
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._stall_after_s = stall_after_s
        self._retry_delay_s = retry_min_s
        self._outage_since: float | None = None
        self._outage_failures = 0
        self._last_frame_at: float | None = None
        self.decoder = decoder if decoder is not None else make_decoder(config.decoder)
        # Lives in memory only: digests of who was seen cannot be matched after a theft.
        boot_key = secrets.token_bytes(32)
        self.debounce = Debounce(config.debounce_s, self.clock.monotonic, key=boot_key)
        self._frame_period_s: float | None = None
        self._frame_due: float | None = None
        self.remote_config = RemoteConfig(config, self.state, self._apply_settings)
        # Read before the broker is reached: a reboot with no network keeps the settings.
        self.remote_config.restore()
        self.indicators.sound_allowed = lambda: self.remote_config.settings.sound_allowed(
            self.clock.now()
        )
        card_keys = CardKeyring.from_pem_files(config.card_keys) if config.card_keys else None
        # Revoked cards as last heard, kept in the state file: refused even after an
        # offline restart. Without card keys every card is refused anyway.
        self.card_revocations = (
            CardRevocationList(card_keys, self.state) if card_keys is not None else None
        )
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
            on_hub_time=self.clock.learn,
            health=self.health,
            status_every_s=status_every_s,
            on_config=self.remote_config.receive,
            on_card_revocations=self.card_revocations.receive if self.card_revocations else None,
            wall_clock=self.clock.now,
        )
        self.scanner = Scanner(
            unit_id=config.unit_id,
            venue_id=config.venue_id,
            decoder=self.decoder,
            journal=self.journal,
            indicators=self.indicators,
            debounce=self.debounce,
            clock=self.clock,
            card_keys=card_keys,
            repeat_hold_s=config.repeat_hold_s,
            is_online=lambda: self.sync.online,
            on_recorded=self._recorded,
            count=self.state.increment,
            clock_trusted=self.clock.trusted,
            seal_key=seal_key,
            view_key=boot_key,
        )
        self._stop = threading.Event()
        # Waiting on the stop event lets stop() cut a long backoff short.
        self._sleep: Callable[[float], object] = sleep or self._stop.wait
        self._closed = False
        self._next_housekeeping = self.clock.monotonic() + HOUSEKEEPING_EVERY_S

    @property
    def frames(self) -> FrameSource:
        """The frame source, opened on first use (this may raise: no camera)."""
        if self._frames is None:
            factory = self._frames_factory
            self._frames = factory() if factory is not None else frame_source_for(self.config)
        return self._frames

    @property
    def camera_ok(self) -> bool:
        """False during a frame-source outage (between the first failure and the next frame)."""
        return self._outage_since is None

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
            # Once per turn: a read() that never returns stops this, and systemd restarts us.
            self.notifier.watchdog()
            # Checked before the read: a camera outage of hours still flushes and purges.
            if self.clock.monotonic() >= self._next_housekeeping:
                self.housekeeping()
            if self._update_tick():
                break  # every scan is in the journal: the new release picks them up
            try:
                frame = self.frames.read()
            except Exception as exc:
                self._frames_failed(exc)
                continue
            if frame is None:
                if self._frames_end:
                    break
                self._no_frame()
                continue
            self._frames_ok()
            self.scanner.process(frame)
            self._count_decoded()
            seen += 1
            self._pace()
        return seen

    def _apply_settings(self, settings: Settings) -> None:
        """Put remote settings into effect (called from the MQTT thread, or at start)."""
        self.debounce.set_window(settings.debounce_s)
        # One assignment: the frame loop reads it once per frame, no lock needed.
        self._frame_period_s = 1 / settings.frame_rate if settings.frame_rate else None

    def _recorded(self, scan: object) -> None:
        self._last_scan_mono = time.monotonic()
        self.sync.notify()

    def _update_tick(self) -> bool:
        """Once a second: move a software update on; True when the loop must end for it."""
        agent = self.update_agent
        now = time.monotonic()
        if agent is None or now < self._next_update_tick:
            return False
        self._next_update_tick = now + 1.0
        settings = self.remote_config.settings
        # Asked here rather than when the settings arrive: the config's version is
        # known only once it is applied.
        agent.want(settings.software, self.remote_config.version)
        try:
            return agent.tick(
                self.clock.now(),
                last_scan_age_s=now - self._last_scan_mono,
                quiet_hours=settings.quiet_hours,
                status_acked=self.sync.status_acknowledged(),
            )
        except Exception:
            log.exception("the software update failed; scanning goes on with this release")
            return False

    def _pace(self) -> None:
        """With a remote `frame_rate`, wait for the next frame's deadline."""
        period = self._frame_period_s
        if period is None:
            self._frame_due = None
            return
        now = self.clock.monotonic()
        # Deadlines, not sleeps of one period; a late frame is not followed by a burst.
        due = max(self._frame_due if self._frame_due is not None else now, now - period) + period
        self._frame_due = due
        if due > now:
            self._wait(due - now)

    def _count_decoded(self) -> None:
        self._rate_window_frames += 1
        now = time.monotonic()
        elapsed = now - self._rate_window_start
        if elapsed >= DECODE_RATE_WINDOW_S:
            self.decode_rate_hz = round(self._rate_window_frames / elapsed, 1)
            self._rate_window_start, self._rate_window_frames = now, 0

    def health(self) -> dict[str, object]:
        """The optional `UnitStatus` figures, as of now (called from the sync's thread)."""
        rate = self.decode_rate_hz
        idle_s = time.monotonic() - self._rate_window_start
        if rate is not None and idle_s > 2 * DECODE_RATE_WINDOW_S:
            rate = 0.0  # no frame for two windows: the last rate would be a lie
        return {
            "uptime_s": int(time.monotonic() - self._started_mono),
            "clock_trusted": self.clock.trusted(),
            "cpu_temp_c": cpu_temp_c(),
            "disk_free_mb": disk_free_mb(self.config.data_dir),
            "camera_ok": self.camera_ok,
            "decode_rate_hz": rate,
            **self.remote_config.status_fields(),
            **(self.update_agent.status_fields() if self.update_agent else {}),
        }

    def _wait(self, delay_s: float) -> None:
        """Sleep `delay_s` (cut short by stop()), petting the watchdog in between: a
        backoff of 30 s must not look like a hang to a WatchdogSec of 30 s."""
        step = self.notifier.watchdog_every_s
        if step is None:
            self._sleep(delay_s)
            return
        deadline = self.clock.monotonic() + delay_s
        while not self._stop.is_set() and (left := deadline - self.clock.monotonic()) > 0:
            self._sleep(min(left, step))
            self.notifier.watchdog()

    def _frames_failed(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._start_outage(f"the frame source failed: {exc}", exc)
        self._outage_failures += 1
        delay, self._retry_delay_s = (
            self._retry_delay_s,
            min(self._retry_delay_s * 2, self._retry_max_s),
        )
        log.debug("frame source failure %d; retrying in %.1f s", self._outage_failures, delay)
        self.notifier.status(f"camera outage: retrying in {delay:.0f} s")
        if self._frames_factory is not None and self._frames is not None:
            # A camera that failed is often wedged; a fresh open is what recovers it.
            source, self._frames = self._frames, None
            try:
                source.close()
            except Exception:
                log.warning("closing the failed frame source failed too", exc_info=True)
        self._wait(delay)

    def _no_frame(self) -> None:
        now = self.clock.monotonic()
        if self._last_frame_at is None:
            self._last_frame_at = now  # the wait is counted from the first empty read
        elif self._outage_since is None and now - self._last_frame_at >= self._stall_after_s:
            self._start_outage(f"no frame from the camera for {now - self._last_frame_at:.0f} s")
        self._wait(1 / self.config.frames.fps)

    def _frames_ok(self) -> None:
        now = self.clock.monotonic()
        self._last_frame_at = now
        if self._outage_since is not None:
            log.warning(
                "the frame source is back after %.1f s and %d failed reads; scanning again",
                now - self._outage_since,
                self._outage_failures,
            )
            self._outage_since = None
            self._outage_failures = 0
            self._retry_delay_s = self._retry_min_s
            self.notifier.status("scanning")

    def _start_outage(self, what: str, exc: Exception | None = None) -> None:
        # Once per outage: a camera that is away for an hour must not beep for an hour
        # or write a traceback every 30 s.
        self._outage_since = self.clock.monotonic()
        log.error(
            "%s; the door shows FAULT and retries every %.1f-%.0f s",
            what,
            self._retry_min_s,
            self._retry_max_s,
            exc_info=exc,
        )
        self.indicators.show(Feedback.FAULT)

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
