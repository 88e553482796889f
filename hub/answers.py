"""The hub's answer to a batch, in the revision of the contract the unit reads.

A unit that sent ``rev`` 6 or newer gets every refusal with its code and whether to
retry, and a batch refused whole as one `BatchRefusal`. A unit of revision 5 or older
reads neither (its `Ack` model refuses unknown keys), so it gets the answer it always
got: a final refusal lists each scan with its reason (the unit forgets them; the hub
keeps them as dead letters), and a refusal worth a retry is left out, so the unit
keeps those scans and sends them again after its ack timeout.

    >>> ack = answer(read, stored, refused, None, hub_time)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from doorscan.errors import Refusal
from doorscan.wire import REV_FIELD_SINCE, Ack, BatchRefusal, RefusedScan
from doorscan.wire.limits import MAX_REASON_CHARS
from hub.batch_reader import ReadBatch
from hub.judge import RETRY_CODES

__all__ = ["answer"]


def answer(
    read: ReadBatch,
    stored: Sequence[str],
    refused: Sequence[tuple[str, Refusal]],
    whole: Refusal | None,
    hub_time: datetime,
) -> Ack | None:
    """The `Ack` for `read`, or None when this unit can only be answered by silence."""
    modern = read.rev is not None and read.rev >= REV_FIELD_SINCE
    if whole is not None:
        retry = whole.code in RETRY_CODES
        if modern:
            refusal = BatchRefusal(
                code=whole.code, reason=_short(whole.reason), retry=True if retry else None
            )
            return Ack(
                batch_id=read.batch_id, unit_id=read.unit_id, refusal=refusal, hub_time=hub_time
            )
        if retry or not read.scan_ids:
            return None
        refused = [(scan_id, whole) for scan_id in dict.fromkeys(read.scan_ids)]
        stored = []
    entries = []
    for scan_id, why in refused:
        retry = why.code in RETRY_CODES
        if modern:
            entries.append(
                RefusedScan(
                    scan_id=scan_id,
                    reason=_short(why.reason),
                    code=why.code,
                    retry=True if retry else None,
                )
            )
        elif not retry:
            entries.append(RefusedScan(scan_id=scan_id, reason=_short(why.reason)))
    return Ack(
        batch_id=read.batch_id,
        unit_id=read.unit_id,
        stored=list(stored),
        refused=entries,
        hub_time=hub_time,
    )


def _short(reason: str) -> str:
    return reason.replace("\x00", "")[:MAX_REASON_CHARS] or "refused"
