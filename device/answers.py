"""What the hub's answer to a batch means for each scan the unit sent.

The sync (`device.mqtt_sync`) hands each `Ack` here and gets three lists back:

- ``stored``: the hub has them; the journal settles them;
- ``final``: refused for good (no ``retry``; an older hub's refusals, which carry no
  code, count as final too); the journal quarantines them with the code and reason;
- ``later``: the hub cannot take them now (``retry``); they stay pending and `Deferrals`
  keeps them out of the next batches for a while.

A batch refused whole names no scan: its scans are the ones the unit sent in it, known
while the batch is in flight.

    >>> verdicts = read_answer(ack, sent={"scan-1", "scan-2"})        # doctest: +SKIP
    >>> journal.settle(verdicts.stored, now); journal.quarantine(verdicts.final, now)
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from doorscan.wire import Ack

__all__ = ["Deferrals", "Verdicts", "read_answer"]

log = logging.getLogger(__name__)


@dataclass
class Verdicts:
    stored: list[str] = field(default_factory=list)
    final: list[tuple[str, str, str]] = field(default_factory=list)  # (scan id, code, reason)
    later: list[str] = field(default_factory=list)


def read_answer(ack: Ack, sent: Collection[str]) -> Verdicts:
    """The verdict on each scan `ack` answers; `sent` are the scan ids of its batch."""
    verdicts = Verdicts(stored=list(ack.stored))
    if ack.refusal is not None:
        ids = sorted(sent)
        log.warning(
            "hub refused batch %s (%d scans) whole: %s: %s",
            ack.batch_id,
            len(ids),
            ack.refusal.code,
            ack.refusal.reason,
        )
        if ack.refusal.retry:
            verdicts.later = ids
        else:
            verdicts.final = [(i, ack.refusal.code, ack.refusal.reason) for i in ids]
    for refused in ack.refused:
        log.warning("hub refused scan %s: %s", refused.scan_id, refused.reason)
        if refused.retry:
            verdicts.later.append(refused.scan_id)
        else:
            verdicts.final.append((refused.scan_id, refused.code or "refused", refused.reason))
    return verdicts


class Deferrals:
    """Scans held back from sending until a time, with a backoff that doubles.

    Each answer that defers scans doubles the delay, from `min_s` up to `max_s`; an
    answer that defers none starts it over. Not thread-safe: the sync holds its lock.
    """

    def __init__(self, min_s: float, max_s: float) -> None:
        self._min_s = min_s
        self._max_s = max_s
        self._round = 0
        self._due: dict[str, float] = {}

    def defer(self, scan_ids: list[str], now: float) -> float | None:
        """Hold `scan_ids` back from `now` (monotonic); the delay, or None if none."""
        if not scan_ids:
            self._round = 0
            return None
        delay = min(self._min_s * 2.0**self._round, self._max_s)
        self._round = min(self._round + 1, 30)
        for scan_id in scan_ids:
            self._due[scan_id] = now + delay
        return delay

    def waiting(self, now: float) -> frozenset[str]:
        """The scans still held back at `now`; the ones whose time came are let go."""
        for scan_id in [i for i, due in self._due.items() if due <= now]:
            del self._due[scan_id]
        return frozenset(self._due)
