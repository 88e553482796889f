"""Replay dead letters after a fix: nothing the hub kept is lost for good.

A hub started with the wrong sealing key dead-letters every sealed scan as ``unsealable``
(the unit, told "final", quarantines its copy); a unit registered after its first batch
came, the same for a code refused on a card key that was later added. Once the hub is
fixed, ``doorscan-hub dead-letters replay`` judges each kept scan message again with the
keys and registry the hub has now (`hub.ingest.Ingestor.replay`):

* what now passes is stored (a scan already stored counts as stored: replay is
  idempotent, and so is a unit that later re-sends from its quarantine);
* a letter whose every scan is now stored is removed from the dead letters;
* a letter that still fails stays as it was, with its first reason;
* the run is one audit entry (who, which codes, since when, the counts).

    >>> report = replay_dead_letters(store, ingestor, principal, codes={"unsealable"},
    ...                              since=None, at=now)                     # doctest: +SKIP
    >>> report.recovered, report.still_refused                                  # doctest: +SKIP
    (12, 0)

Only scan messages are replayed; a dead letter kept cut short (over the size limit) can
never be read again and is counted as still refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339
from doorscan.wire import parse_topic
from hub.access import AccessControlledStore, AuditTrail, Principal
from hub.ingest import ReplayOutcome
from hub.store import DeadLetter, HubStore

__all__ = ["MAX_REPLAY", "ReplayReport", "Replayer", "replay_dead_letters"]

MAX_REPLAY = 100_000
"""Letters looked at in one run (newest first); run again for older ones."""


class Replayer(Protocol):
    def replay(
        self, topic: str, payload: bytes, sent_at: datetime, *, store: bool = True
    ) -> ReplayOutcome: ...


@dataclass
class ReplayReport:
    looked_at: int = 0
    recovered: int = 0  # letters whose every scan is now stored (they are removed)
    still_refused: int = 0  # letters that fail again (they stay)
    scans_stored: int = 0
    codes_now: dict[str, int] = field(default_factory=dict)  # why those still fail


def _wanted(letter: DeadLetter, codes: Collection[str], since: datetime | None) -> bool:
    if codes and letter.code not in codes:
        return False
    if since is not None and letter.received_at < since:
        return False
    try:
        return parse_topic(letter.topic)[0] == "scans"
    except Refusal:
        return False


def replay_dead_letters(
    store: HubStore,
    ingestor: Replayer,
    principal: Principal,
    *,
    codes: Collection[str],
    since: datetime | None,
    at: datetime,
    reason: str = "replay after a fix",
    dry_run: bool = False,
) -> ReplayReport:
    """Replay the scan letters matching `codes` (all if empty) received since `since`.

    Admin only: the letters are read through `hub.access` (their payloads, audited with
    `reason`), so another role is refused before anything is read.

    With `dry_run`, each letter is judged but nothing is stored or removed and no replay
    entry is written (the payloads were still read, and that read is audited): the
    report says what a real run would do.
    """
    report = ReplayReport()
    kept = AccessControlledStore(store, principal).dead_letters(
        MAX_REPLAY, at, payloads=True, reason=reason
    )
    letters = [d for d in kept if _wanted(d, codes, since)]
    recovered_ids: list[int] = []
    for letter in reversed(letters):  # oldest first, as they came
        report.looked_at += 1
        try:
            outcome = ingestor.replay(
                letter.topic, letter.payload, letter.received_at, store=not dry_run
            )
        except Refusal as refusal:
            outcome = ReplayOutcome([], [("", refusal)])
        if outcome.stored and not outcome.refused:
            report.recovered += 1
            report.scans_stored += len(outcome.stored)
            recovered_ids.append(letter.id)
        else:
            report.still_refused += 1
            for _, why in outcome.refused:
                report.codes_now[why.code] = report.codes_now.get(why.code, 0) + 1
    if not dry_run:
        store.remove_dead_letters(recovered_ids)
        AuditTrail(store, principal).record(
            "replay_dead_letters",
            reason,
            {
                "codes": sorted(codes),
                "since": format_rfc3339(since) if since is not None else None,
                "looked_at": report.looked_at,
                "recovered": report.recovered,
                "still_refused": report.still_refused,
                "scans_stored": report.scans_stored,
            },
            at,
        )
    return report
