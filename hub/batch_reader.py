"""Read a scan batch so that every batch whose sender and id can be read gets an answer.

A batch is read in layers, each refusing only what it must:

1. the payload must be a UTF-8 JSON object of version 1 with a readable ``batch_id``;
   if not, nobody can be answered and `read_batch` raises `Refusal` (the hub keeps the
   message as a dead letter);
2. the batch itself (its head: ids, times, the number of scans): a fault here refuses
   the whole batch, in an answer (`ReadBatch.refusal`);
3. each scan on its own: a scan that does not validate is refused alone, its
   neighbours go on to be judged. A scan whose ``scan_id`` cannot be read cannot be
   named in an answer, so it refuses the batch (step 2).

The common case, a batch that validates whole, takes one pydantic pass.

    >>> read = read_batch("door-1", payload)                      # doctest: +SKIP
    >>> read.refusal or [s.scan.scan_id for s in read.scans]      # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from doorscan.errors import Refusal
from doorscan.wire import (
    MAX_BATCH_SCANS,
    SCAN_ID_PATTERN,
    WIRE_REVISION,
    BatchHead,
    Scan,
    ScanBatch,
    canonical_bytes,
    check_version,
    load_json,
    schema_refusal,
)

__all__ = ["ReadBatch", "ReadScan", "RefusedRead", "read_batch"]

_SCAN_ID = re.compile(SCAN_ID_PATTERN)


@dataclass(frozen=True)
class ReadScan:
    """A scan that validated, with its canonical bytes (what its digest is made of)."""

    scan: Scan
    wire: bytes


@dataclass(frozen=True)
class RefusedRead:
    """A scan refused by the reader, with the bytes to keep as its dead letter."""

    scan_id: str
    refusal: Refusal
    raw: bytes


@dataclass
class ReadBatch:
    """What could be read of one batch: whom to answer, and what to judge or refuse."""

    unit_id: str  # the topic's: the broker's ACL vouches for it, not the payload
    batch_id: str
    rev: int | None  # the revision the sender speaks (None: 5 or older)
    head: BatchHead | None = None
    scans: list[ReadScan] = field(default_factory=list)
    refused: list[RefusedRead] = field(default_factory=list)
    refusal: Refusal | None = None  # the batch as a whole
    scan_ids: list[str] = field(default_factory=list)  # every readable id, in order


def read_batch(unit_id: str, payload: bytes) -> ReadBatch:
    """Read a batch published on `unit_id`'s scans topic; `Refusal` if it has no answerable id."""
    text, data = load_json(payload)
    batch_id = data.get("batch_id")
    try:
        rev = check_version(data)
    except Refusal as refusal:
        if refusal.code == "schema_version" or not _is_scan_id(batch_id):
            raise  # not a version-1 batch, or nobody to answer: kept, not answered
        # A newer unit (it reads our answers: revisions only add), or a "rev" that is not
        # a number (it wrote one, so it is of revision 6 or newer): answered whole.
        read = ReadBatch(unit_id, str(batch_id), WIRE_REVISION, refusal=refusal)
        read.scan_ids = _readable_ids(data.get("scans"))
        return read
    if not _is_scan_id(batch_id):
        raise Refusal("schema", "batch_id: missing or not 8-64 characters of [A-Za-z0-9_-]")
    read = ReadBatch(unit_id, str(batch_id), rev)
    read.scan_ids = _readable_ids(data.get("scans"))
    if "unit_id" in data and data["unit_id"] != unit_id:
        read.refusal = Refusal(
            "unit_mismatch", f"batch of {str(data.get('unit_id'))[:64]!r} on {unit_id}'s topic"
        )
        return read
    try:
        batch = ScanBatch.model_validate_json(text, strict=True)
    except ValidationError:
        return _read_in_parts(read, data)
    read.head = batch
    read.scans = [ReadScan(scan, canonical_bytes(scan)) for scan in batch.scans]
    return read


def _read_in_parts(read: ReadBatch, data: dict[str, Any]) -> ReadBatch:
    """The slow path: the head, then each scan alone, to refuse no more than is wrong."""
    head_data = {key: value for key, value in data.items() if key != "scans"}
    try:
        read.head = BatchHead.model_validate_json(json.dumps(head_data), strict=True)
    except ValidationError as exc:
        read.refusal = schema_refusal(exc)
        return read
    scans = data.get("scans")
    if not isinstance(scans, list) or not scans:
        read.refusal = Refusal("schema", "scans: a list of 1 to 500 scans")
        return read
    if len(scans) > MAX_BATCH_SCANS:
        read.refusal = Refusal(
            "too_many_scans", f"{len(scans)} scans; a batch holds at most {MAX_BATCH_SCANS}"
        )
        return read
    for index, raw in enumerate(scans):
        if not isinstance(raw, dict) or not _is_scan_id(raw.get("scan_id")):
            read.refusal = Refusal(
                "schema", f"scans.{index}.scan_id: unreadable, so the scan cannot be answered"
            )
            return read
    repeated = {scan_id for scan_id, n in Counter(read.scan_ids).items() if n > 1}
    for scan_id in sorted(repeated):
        # Refused once, with every copy kept: the unit is told once, nothing is lost.
        copies = [raw for raw in scans if raw["scan_id"] == scan_id]
        refusal = Refusal("duplicate_in_batch", f"scan id {scan_id} is named {len(copies)} times")
        read.refused.append(RefusedRead(scan_id, refusal, _compact(copies)))
    for index, raw in enumerate(scans):
        scan_id = str(raw["scan_id"])
        if scan_id in repeated:
            continue
        raw_bytes = _compact(raw)
        try:
            scan = Scan.model_validate_json(raw_bytes, strict=True)
        except ValidationError as exc:
            read.refused.append(
                RefusedRead(scan_id, schema_refusal(exc, f"scans.{index}"), raw_bytes)
            )
            continue
        read.scans.append(ReadScan(scan, canonical_bytes(scan)))
    return read


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _is_scan_id(value: Any) -> bool:
    return isinstance(value, str) and _SCAN_ID.fullmatch(value) is not None


def _readable_ids(scans: Any) -> list[str]:
    if not isinstance(scans, list):
        return []
    return [
        str(raw["scan_id"])
        for raw in scans[:MAX_BATCH_SCANS]
        if isinstance(raw, dict) and _is_scan_id(raw.get("scan_id"))
    ]
