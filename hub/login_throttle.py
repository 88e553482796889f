"""Slow down password guessing: a few failed logins, then a pause.

scrypt makes each guess cost the hub ~50 ms, which still allows tens of thousands of
guesses a day against one account. `LoginThrottle` counts failed logins in a sliding
window, per user id and per client address, and refuses further attempts (before the
password is even checked) until the oldest failure in the window ages out:

    >>> throttle = LoginThrottle()
    >>> throttle.retry_after("ytepleiku", "10.0.0.7", now)   # doctest: +SKIP
    0.0                     # go ahead; after 5 failures within 15 min: seconds to wait
    >>> throttle.failed("ytepleiku", "10.0.0.7", now)        # doctest: +SKIP
    >>> throttle.succeeded("ytepleiku", "10.0.0.7")          # doctest: +SKIP

What it is and is not: state lives in the web process (a restart forgets it, and each
of N web processes counts on its own), which is enough to turn an online guessing run
into a crawl without a table to migrate. A locked user id is locked for everybody, which
lets an attacker keep a known account out for as long as it keeps failing; the per-address
limit is higher for the same reason (many tracers can sit behind one office NAT).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from datetime import datetime, timedelta

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 30,
        window: timedelta = timedelta(minutes=15),
        max_tracked: int = 10_000,
    ) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._window = window
        self._max_tracked = max_tracked
        self._failures: OrderedDict[tuple[str, str], deque[datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, user_id: str, address: str, now: datetime) -> float:
        """Seconds until a login for this user from this address may be tried; 0 if now."""
        with self._lock:
            wait = 0.0
            for key in self._keys(user_id, address):
                times = self._recent(key, now)
                if len(times) >= self._limits[key[0]]:
                    # Free again once enough old failures leave the window.
                    oldest_to_expire = times[len(times) - self._limits[key[0]]]
                    wait = max(wait, (oldest_to_expire + self._window - now).total_seconds())
            return wait

    def failed(self, user_id: str, address: str, now: datetime) -> None:
        with self._lock:
            for key in self._keys(user_id, address):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                self._failures.move_to_end(key)
            # Bounded memory under a flood of made-up user ids: forget the stalest first.
            while len(self._failures) > self._max_tracked:
                self._failures.popitem(last=False)

    def succeeded(self, user_id: str, address: str) -> None:
        """A good password clears the user's count (not the address's: others may guess)."""
        with self._lock:
            self._failures.pop(("user", user_id.casefold()), None)

    @staticmethod
    def _keys(user_id: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", user_id.casefold()), ("address", address)

    def _recent(self, key: tuple[str, str], now: datetime) -> deque[datetime]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times
