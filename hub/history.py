"""A unit cannot rewrite history: which of its scans the hub holds apart from traces.

A unit's certificate lets it store check-ins at its venue. Someone who copied that
certificate could claim check-ins of real people at any past time, and so plant false
F1 contacts. The hub bounds what one unit can claim by what it knows independently of
that claim; a scan past a bound is stored apart (``held_scans``: kept, counted, listed
for an admin by ``doorscan-hub held``, never read by a trace, a visitor list or a
report) rather than refused, because an honest unit with a broken clock trips the same
wires, and an admin can release what turns out to be genuine.

The bounds, in the order they are checked (limits in `doorscan.wire.limits`):

1. ``before_registration``: dated before provisioning registered the unit
   (`UnitRecord.registered_at`), less `DRAIN_SLACK_S` for the clocks' disagreement.
2. ``before_drain``: dated more than `DRAIN_SLACK_S` before the unit's last status
   that said ``"backlog": 0`` on a trusted clock. At that moment the unit had sent
   every scan it had recorded, so a new one from before it was never on that unit.
3. ``too_fast``: the unit would have more than `RATE_MAX_SCANS` traced scans in some
   `RATE_WINDOW_S` window of claimed times. One door lets one person at a time show a
   code, wait for the light and walk on: a turnstile paces about 30 people a minute, and
   the unit's own feedback takes about a second, so 60 a minute is twice what a busy
   door sees; more is a flood, not a queue. A hub serving wider gates can raise it
   (``doorscan-hub serve --max-scans-per-minute N``; 0 turns this bound off).

    >>> hold_of(scan_ms, UnitHistory(registered_ms, drained_ms, nearby_ms))  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from doorscan.timefmt import format_rfc3339, from_ms
from doorscan.wire.limits import DRAIN_SLACK_S, RATE_MAX_SCANS, RATE_WINDOW_S
from hub.store import Hold

__all__ = ["UnitHistory", "hold_of"]

_SLACK_MS = DRAIN_SLACK_S * 1000
_WINDOW_MS = RATE_WINDOW_S * 1000


@dataclass
class UnitHistory:
    """What the hub knows of one unit, independently of the batch being judged.

    `traced_ms` is sorted: the unit's traced scans near the batch's times; `hold_of`
    adds each scan it lets through, so a batch cannot outrun the rate by itself.
    """

    registered_ms: int | None
    drained_ms: int | None
    traced_ms: list[int] = field(default_factory=list)
    max_per_window: int = RATE_MAX_SCANS  # 0: no rate bound (a lab, a load test)


def hold_of(scanned_ms: int, history: UnitHistory) -> Hold | None:
    """The bound a new scan at `scanned_ms` breaks, or None (and it joins the history)."""
    if history.registered_ms is not None and scanned_ms < history.registered_ms - _SLACK_MS:
        return Hold(
            "before_registration",
            f"dated {_at(scanned_ms)}, before the unit was registered "
            f"({_at(history.registered_ms)})",
        )
    if history.drained_ms is not None and scanned_ms < history.drained_ms - _SLACK_MS:
        return Hold(
            "before_drain",
            f"dated {_at(scanned_ms)}, before the unit said it had sent everything "
            f"({_at(history.drained_ms)})",
        )
    if history.max_per_window and _too_fast(history.traced_ms, scanned_ms, history.max_per_window):
        return Hold(
            "too_fast",
            f"more than {history.max_per_window} scans of the unit within {RATE_WINDOW_S} s "
            f"around {_at(scanned_ms)}",
        )
    bisect.insort(history.traced_ms, scanned_ms)
    return None


def _too_fast(traced: list[int], at_ms: int, most: int) -> bool:
    """Would some window of `_WINDOW_MS` that holds `at_ms` hold more than the maximum?"""
    low = bisect.bisect_right(traced, at_ms - _WINDOW_MS)
    high = bisect.bisect_left(traced, at_ms + _WINDOW_MS)
    if high - low < most:
        return False  # the common case: too few neighbours for any window to overflow
    times = traced[low:high]
    bisect.insort(times, at_ms)
    # Every window that holds at_ms starts at one of these times or before at_ms - W;
    # checking the windows that start at each time before or at at_ms is enough.
    for start_index, start in enumerate(times):
        if start > at_ms:
            break
        end_index = bisect.bisect_left(times, start + _WINDOW_MS)
        if end_index - start_index > most and start + _WINDOW_MS > at_ms:
            return True
    return False


def _at(ms: int) -> str:
    return format_rfc3339(from_ms(ms))
