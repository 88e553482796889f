"""Debounce: a person accepted at this unit a moment ago is "already in", not a new scan.

People show their code twice, or a friend's phone shows the same code again. Within
`window_s` of a person's last *accepted* scan the scanner shows "already in" and
records nothing. Showing the code again while "already in" does not extend the
window: the window measures time since the last record, so someone who keeps
scanning is recorded again once it has passed.

The window is measured on the monotonic clock only; the wall clock of a Pi without
a real-time clock can jump by hours when NTP answers, and that must neither let a
flood of duplicates through nor lock people out. Nothing is kept on disk: after a
restart everyone may be recorded once more, which the contact trace tolerates.
Not even memory holds a person key: it is kept as an HMAC-SHA256 under `key`, a
random key of this boot (a stolen unit must reveal no identity).

The edge is exclusive: a person is recent while strictly less than `window_s` has
passed since their mark; at exactly `window_s` a new scan is recorded.

    >>> clock = ManualClock(datetime(2021, 8, 15, tzinfo=UTC))      # doctest: +SKIP
    >>> debounce = Debounce(300, clock.monotonic)
    >>> debounce.mark("id:064090123456")
    >>> clock.advance(299.9); debounce.is_recent("id:064090123456")
    True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Debounce"]


class Debounce:
    """Who was accepted within the last `window_s` seconds; ``window_s=0`` turns it off."""

    def __init__(
        self, window_s: float, monotonic: Callable[[], float], *, key: bytes | None = None
    ) -> None:
        if window_s < 0:
            raise ValueError("window_s cannot be negative")
        self._key = key if key is not None else secrets.token_bytes(32)
        self.window_s = float(window_s)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # digest of person_key -> monotonic time of their last mark, oldest mark first, so that
        # pruning stops at the first entry still inside the window.
        self._marks: OrderedDict[bytes, float] = OrderedDict()

    def is_recent(self, person_key: str) -> bool:
        """True if `person_key` was marked less than `window_s` ago (never extends it)."""
        if self.window_s == 0:
            return False
        now = self._monotonic()
        digest = self._digest(person_key)
        with self._lock:
            marked = self._marks.get(digest)
        return marked is not None and now - marked < self.window_s

    def mark(self, person_key: str) -> None:
        """Start the window for `person_key`: call it once the journal has committed."""
        if self.window_s == 0:
            return
        now = self._monotonic()
        digest = self._digest(person_key)
        with self._lock:
            self._marks[digest] = now
            self._marks.move_to_end(digest)
            self._prune(now)

    def set_window(self, window_s: float) -> None:
        """Change the window while scanning (remote config): the next `is_recent()` uses it.

        Marks already made are kept and judged by the new window; with ``0`` they are
        dropped (a window of 0 keeps no marks at all).
        """
        if window_s < 0:
            raise ValueError("window_s cannot be negative")
        with self._lock:
            self.window_s = float(window_s)
            if self.window_s == 0:
                self._marks.clear()

    def forget_older(self) -> int:
        """Drop everyone whose window has passed; return how many. `mark()` does it too."""
        now = self._monotonic()
        with self._lock:
            return self._prune(now)

    def __len__(self) -> int:
        """How many people are remembered (those inside the window, after a prune)."""
        with self._lock:
            return len(self._marks)

    def _digest(self, person_key: str) -> bytes:
        return hmac.new(self._key, person_key.encode("utf-8"), hashlib.sha256).digest()

    def _prune(self, now: float) -> int:
        # Marks are appended in time order, so the expired ones are all at the front:
        # each mark is removed once, which keeps mark() O(1) amortised and memory
        # bounded by the people accepted within one window.
        dropped = 0
        while self._marks:
            key, marked = next(iter(self._marks.items()))
            if now - marked < self.window_s:
                break
            del self._marks[key]
            dropped += 1
        return dropped
