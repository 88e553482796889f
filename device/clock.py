"""The unit's two clocks, behind one injectable object.

`now()` is the wall clock that stamps scans; on a Pi with no real-time clock it can
be wrong by years until NTP answers. `monotonic()` never jumps, so everything that
measures an interval (debounce, timeouts, backoff) uses it and nothing else.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "SystemClock", "ManualClock"]


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
