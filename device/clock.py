"""The unit's two clocks, behind one injectable object.

`now()` is the wall clock that stamps scans; on a Pi with no real-time clock it can
be wrong by years until NTP answers. `monotonic()` never jumps, so everything that
measures an interval (debounce, timeouts, backoff) uses it and nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

__all__ = ["BOOT_ID", "Clock", "ManualClock", "SystemClock", "UnitClock", "ntp_synchronized"]

log = logging.getLogger(__name__)

BOOT_ID = uuid.uuid4().hex[:16]
"""This process's boot: monotonic readings only compare within one boot."""

# systemd-timesyncd creates this file once it has synchronised the clock since boot.
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, aware, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...


class SystemClock:
    """The real clocks of the machine."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that tests and the demo move by hand; it records nothing it was not told.

    >>> clock = ManualClock(datetime(2021, 8, 15, 2, 0, tzinfo=UTC))
    >>> clock.advance(90)
    >>> clock.now().isoformat(), clock.monotonic()
    ('2021-08-15T02:01:30+00:00', 90.0)
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware start time")
        self._lock = threading.Lock()
        self._wall = start
        self._mono = 0.0

    def now(self) -> datetime:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward, as real time passing would."""
        if seconds < 0:
            raise ValueError("time passing never goes backwards; use set_wall() for a clock jump")
        with self._lock:
            self._wall += timedelta(seconds=seconds)
            self._mono += seconds

    def set_wall(self, value: datetime) -> None:
        """Jump the wall clock only (NTP correction, a stale clock at boot)."""
        with self._lock:
            self._wall = value


def ntp_synchronized() -> bool:
    """True once systemd-timesyncd has synchronised the clock since boot."""
    return _TIMESYNCD_FLAG.exists()


class UnitClock:
    """The unit's wall clock, and whether it can be trusted.

    A Pi has no real-time clock: it boots with the time it was switched off (or 1970)
    until NTP answers. So a scan's time is *trusted* only once NTP has synchronised
    (`ntp_synced`) or the hub has told the unit the time (`learn`, from an ack). After
    `learn`, `now()` is the hub's time carried forward on the monotonic clock, so a
    later jump of the system clock (forward a year, back an hour) changes nothing.
    Before it, `now()` is the system clock as it is, and scans say `clock_trusted: false`
    with the boot id and monotonic reading the hub needs to correct them.

    >>> base = ManualClock(datetime(2020, 5, 1, tzinfo=UTC))
    >>> clock = UnitClock(base, ntp_synced=lambda: False)
    >>> clock.trusted()
    False
    >>> clock.learn(datetime(2022, 1, 10, tzinfo=UTC))
    >>> base.set_wall(datetime(2023, 1, 1, tzinfo=UTC)); base.advance(60)
    >>> clock.trusted(), clock.now().isoformat()
    (True, '2022-01-10T00:01:00+00:00')
    """

    def __init__(self, base: Clock, *, ntp_synced: Callable[[], bool] = ntp_synchronized) -> None:
        self._base = base
        self._ntp_synced = ntp_synced
        self._lock = threading.Lock()
        self._anchor: tuple[datetime, float] | None = None  # (true time, monotonic then)

    def trusted(self) -> bool:
        return self._anchor is not None or self._ntp_synced()

    def now(self) -> datetime:
        with self._lock:
            anchor = self._anchor
        if anchor is None:
            return self._base.now()
        true_time, at_mono = anchor
        return true_time + timedelta(seconds=self._base.monotonic() - at_mono)

    def monotonic(self) -> float:
        return self._base.monotonic()

    def learn(self, true_time: datetime) -> None:
        """Take `true_time` (the hub's clock in its latest ack) as now, unless NTP rules."""
        if self._ntp_synced():
            return  # NTP is closer to the truth than a time that crossed the broker
        with self._lock:
            if self._anchor is None:
                log.info("clock learned from the hub: %s (system clock said %s)", true_time,
                         self._base.now())  # fmt: skip
            self._anchor = (true_time, self._base.monotonic())
