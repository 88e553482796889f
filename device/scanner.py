"""One frame in, at most one feedback out: decode, judge, debounce, journal, show.

This is the unit's hot path. The order of steps is the delivery promise:

1. decode the frame (zxing-cpp or zbar) and parse each code (`doorscan.payloads`);
2. a code still in front of the camera since the last frames is ignored silently
   (`repeat_hold_s`): at 15 frames/s one card is seen dozens of times;
3. the same person at this unit within `debounce_s` gets "already in" and no record;
4. the scan is committed to the journal, and only THEN the door shows green. If the
   commit fails (disk full, I/O error) the door shows the fault pattern instead: a
   visitor never sees green for a scan that is not on disk.
5. the sync is woken up to send it.

Nothing here blocks on the network or on a beep.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from device.clock import BOOT_ID, Clock
from device.debounce import Debounce
from device.decoders import Decoder
from device.indicators import Feedback
from device.journal import JournalError
from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.payloads import Identity, parse_qr
from doorscan.sealing import seal
from doorscan.timefmt import vietnam_day
from doorscan.wire import Scan

__all__ = ["ScanOutcome", "Scanner"]

log = logging.getLogger(__name__)

# When one frame holds several codes, the door shows the one that matters most.
_PRIORITY = {
    Feedback.FAULT: 4,
    Feedback.REFUSED: 3,
    Feedback.ACCEPTED: 2,
    Feedback.RECORDED_OFFLINE: 2,
    Feedback.ALREADY_IN: 1,
}


class _Journal(Protocol):
    def record(self, scan: Scan) -> None: ...


class _Indicators(Protocol):
    def show(self, feedback: Feedback) -> None: ...


@dataclass(frozen=True)
class ScanOutcome:
    """What happened to one code in one frame."""

    feedback: Feedback
    identity: Identity | None = None
    scan: Scan | None = None
    reason: str | None = None  # why it was refused, or the fault


class Scanner:
    """Turns frames into journal records and door feedback."""

    def __init__(
        self,
        *,
        unit_id: str,
        venue_id: str,
        decoder: Decoder,
        journal: _Journal,
        indicators: _Indicators,
        debounce: Debounce,
        clock: Clock,
        card_keys: CardKeyring | None = None,
        repeat_hold_s: float = 3.0,
        is_online: Callable[[], bool] = lambda: True,
        clock_trusted: Callable[[], bool] = lambda: True,
        on_recorded: Callable[[Scan], None] = lambda scan: None,
        count: Callable[[str], None] = lambda name: None,
        boot_id: str = BOOT_ID,
        seal_key: X25519PublicKey | None = None,
        view_key: bytes | None = None,
    ) -> None:
        """With `seal_key` (the hub's public sealing key) the QR text is sealed before it
        reaches the journal. `view_key` keys the in-memory digests of codes in view (a
        random key of this boot; made here if not given)."""
        self.unit_id = unit_id
        self.venue_id = venue_id
        self._decoder = decoder
        self._journal = journal
        self._indicators = indicators
        self._debounce = debounce
        self._clock = clock
        self._card_keys = card_keys
        self._repeat_hold_s = repeat_hold_s
        self._is_online = is_online
        self._clock_trusted = clock_trusted
        self._on_recorded = on_recorded
        self._count = count
        self._boot_id = boot_id
        self._seal_key = seal_key
        self._view_key = view_key if view_key is not None else secrets.token_bytes(32)
        # Codes seen in the last frames, by keyed digest of the text (kept only in memory):
        # an unkeyed digest of a CCCD text could be matched against a list of people.
        self._in_view: dict[bytes, float] = {}
        self.last_scan_at: datetime | None = None

    def process(self, frame: np.ndarray) -> list[ScanOutcome]:
        """Handle every code in `frame`; show one feedback for the frame if anything happened."""
        outcomes = []
        for symbol in self._decoder.decode(frame):
            if self._still_in_view(symbol.raw):
                continue
            if symbol.text is None:
                outcomes.append(
                    ScanOutcome(Feedback.REFUSED, reason=symbol.error or "unreadable code")
                )
                continue
            outcomes.append(self._handle_text(symbol.text))
        for outcome in outcomes:
            self._count(outcome.feedback.name.lower())
        if outcomes:
            shown = max(outcomes, key=lambda o: _PRIORITY[o.feedback]).feedback
            self._indicators.show(shown)
            for outcome in outcomes:
                if outcome.scan is not None:
                    # Written only after show(): the crash tests read these lines as "this
                    # scan reached the door's feedback" and check each one is in the journal.
                    log.info("feedback %s for scan %s", shown.value, outcome.scan.scan_id)
        return outcomes

    def _still_in_view(self, raw: bytes) -> bool:
        now = self._clock.monotonic()
        digest = hashlib.blake2b(raw, digest_size=16, key=self._view_key).digest()
        seen = self._in_view.get(digest)
        self._in_view[digest] = now  # holding a code in view keeps it silent
        if len(self._in_view) > 256:
            self._in_view = {
                d: t for d, t in self._in_view.items() if now - t < self._repeat_hold_s
            }
        return seen is not None and now - seen < self._repeat_hold_s

    def _handle_text(self, text: str) -> ScanOutcome:
        now = self._clock.now()
        try:
            identity = parse_qr(text, card_keys=self._card_keys, today=vietnam_day(now))
        except Refusal as refusal:
            log.info("refused a code: %s", refusal.reason)
            return ScanOutcome(Feedback.REFUSED, reason=refusal.reason)
        if self._debounce.is_recent(identity.person_key):
            return ScanOutcome(Feedback.ALREADY_IN, identity=identity)
        trusted = self._clock_trusted()
        scan = Scan(
            scan_id=uuid.uuid4().hex,
            venue_id=self.venue_id,
            # Milliseconds are the wire's precision; cut here so the journal holds what is sent.
            scanned_at=now.replace(microsecond=now.microsecond // 1000 * 1000),
            clock_trusted=trusted,
            # Sealed, the journal and the wire hold nothing that names the visitor.
            qr_text=None if self._seal_key else text,
            sealed=seal(text, self._seal_key) if self._seal_key else None,
            kind=identity.kind if self._seal_key else None,
            # With a clock nobody vouches for, what the hub needs to put the time right.
            boot_id=None if trusted else self._boot_id,
            mono_ms=None if trusted else int(self._clock.monotonic() * 1000),
        )
        try:
            self._journal.record(scan)
        except JournalError as exc:
            log.error("scan NOT recorded, fault shown: %s", exc)
            return ScanOutcome(Feedback.FAULT, identity=identity, reason=str(exc))
        self._debounce.mark(identity.person_key)
        self.last_scan_at = scan.scanned_at
        self._on_recorded(scan)
        feedback = Feedback.ACCEPTED if self._is_online() else Feedback.RECORDED_OFFLINE
        return ScanOutcome(feedback, identity=identity, scan=scan)
