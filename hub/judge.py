"""The hub's rules for one scan: who may send it, what time it has, what the code says.

`ScanJudge.judge` is pure (no store, no clock of its own): the ingest hands it what the
registry says of the unit and venues, and the hub's time. It returns the scan to
store or raises `Refusal` with the rule's code (the table is in docs/wire.md):

- the unit must be registered (``unknown_unit``, worth a retry: the registry may lag)
  and active (``revoked_unit``); the venue must be registered (``unknown_venue``, retry)
  and the unit's (``venue_mismatch``);
- the time must not be ahead of the hub by more than the tolerance (``future_time``)
  nor before 2020 (``implausible_time``); a time from an untrusted clock is first put
  right from the unit's monotonic clock (`dated`);
- the text (opened first if sealed: ``no_seal_key`` is a retry, the hub lacks its key;
  ``unsealable`` is final) must parse with the unit's own parsers (their codes), and be
  of the kind the unit said (``kind_mismatch``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.payloads import parse_qr
from doorscan.sealing import open_sealed
from doorscan.timefmt import vietnam_day
from doorscan.wire import BatchHead, CardRevocations, Scan, UnitRecord
from doorscan.wire.codes import retry_codes
from doorscan.wire.limits import EARLIEST_SCAN, FUTURE_TOLERANCE_S
from hub.store import StoredScan

__all__ = ["MAX_DATING_AGE", "RETRY_CODES", "ScanJudge", "dated"]

RETRY_CODES = retry_codes()
"""Refusals that say "not now" (`doorscan.wire.codes`): the hub lacks something (a key,
a registry record) that it may have later, so the unit keeps the scan and sends it
again; never dead-lettered."""

MAX_DATING_AGE = timedelta(days=3650)
"""A monotonic age beyond this is no measurement: the scan keeps the unit's time."""


def dated(scan: Scan, head: BatchHead | None, now: datetime) -> Scan:
    """Put right the time of a scan taken while the unit's clock was not trusted.

    The unit says how long before sending it took the scan, on its monotonic clock
    (which a wrong wall clock does not touch); the hub's own clock says when the batch
    arrived. Their difference dates the scan to within the network delay. It stays
    flagged `clock_trusted: false`. A scan from an earlier boot cannot be dated this
    way and keeps the unit's time, to be judged like any other.
    """
    if (
        head is None
        or scan.clock_trusted
        or scan.mono_ms is None
        or head.sent_mono_ms is None
        or scan.boot_id is None
        or scan.boot_id != head.boot_id
        or scan.mono_ms > head.sent_mono_ms
    ):
        return scan
    age = timedelta(milliseconds=head.sent_mono_ms - scan.mono_ms)
    if age > MAX_DATING_AGE:
        return scan
    corrected = now - age
    return scan.model_copy(
        update={"scanned_at": corrected.replace(microsecond=corrected.microsecond // 1000 * 1000)}
    )


class ScanJudge:
    """The rules above, with the hub's keys."""

    def __init__(
        self,
        *,
        card_keys: CardKeyring | None = None,
        sealing_key: X25519PrivateKey | None = None,
        future_tolerance: timedelta = timedelta(seconds=FUTURE_TOLERANCE_S),
    ) -> None:
        self._card_keys = card_keys
        self._sealing_key = sealing_key
        self._future_tolerance = future_tolerance
        self._revocations_version = 0

    def revoke_cards(self, revocations: CardRevocations) -> bool:
        """Take the fleet's list of revoked cards if it is newer than the one held.

        False for an older or equal version (a retained list delivered again, or late).
        """
        if revocations.version <= self._revocations_version:
            return False
        self._revocations_version = revocations.version
        if self._card_keys is not None:
            self._card_keys.set_revoked(revocations.by_card())
        return True

    def judge(
        self,
        unit_id: str,
        unit: UnitRecord | None,
        venues: Mapping[str, bool],
        scan: Scan,
        now: datetime,
        digest_basis: bytes,
    ) -> StoredScan:
        """The scan to store; `venues` says which venue ids the registry knows."""
        if unit is None:
            raise Refusal("unknown_unit", f"unit {unit_id} is not registered")
        if not unit.active:
            raise Refusal("revoked_unit", f"unit {unit_id} is revoked")
        if not venues.get(scan.venue_id, False):
            raise Refusal("unknown_venue", f"venue {scan.venue_id} is not registered")
        if scan.venue_id != unit.venue_id:
            raise Refusal(
                "venue_mismatch", f"unit {unit_id} belongs to {unit.venue_id}, not {scan.venue_id}"
            )
        if scan.scanned_at > now + self._future_tolerance:
            raise Refusal(
                "future_time", f"scanned_at {scan.scanned_at.isoformat()} is in the future"
            )
        if scan.scanned_at < EARLIEST_SCAN:
            raise Refusal(
                "implausible_time", f"scanned_at {scan.scanned_at.isoformat()} is before 2020"
            )
        identity = parse_qr(
            self._text_of(scan), card_keys=self._card_keys, today=vietnam_day(scan.scanned_at)
        )
        if scan.kind is not None and scan.kind != identity.kind:
            raise Refusal("kind_mismatch", f"scan says {scan.kind}, the code is {identity.kind}")
        return StoredScan(
            scan_id=scan.scan_id,
            unit_id=unit_id,
            venue_id=scan.venue_id,
            scanned_at=scan.scanned_at,
            clock_trusted=scan.clock_trusted,
            identity=identity,
            source="mqtt",
            digest_basis=digest_basis,
        )

    def _text_of(self, scan: Scan) -> str:
        if scan.sealed is None:
            assert scan.qr_text is not None  # the wire's validator guarantees one of the two
            return scan.qr_text
        if self._sealing_key is None:
            raise Refusal("no_seal_key", "the scan is sealed and this hub has no sealing key")
        return open_sealed(scan.sealed, self._sealing_key)
