"""`hub import-csv`: load check-ins recorded elsewhere (a phone, a paper list typed up).

The file::

    venue_id,scanned_at,qr_text[,device_id]
    cho-pleiku,2021-08-15T09:30:00+07:00,"064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3|15082021"

* The header must be exactly that line; anything else refuses the whole file.
* Encoding: UTF-8, with or without a BOM. A file that is not valid UTF-8 is refused
  whole, naming the byte offset of the first bad byte. We do not guess cp1258 or
  Latin-1: a wrong guess turns "Nguyễn" into another valid-looking name, and that
  person would then never match their own CCCD. Re-save the file as UTF-8.
* Each record is one physical line (no accepted QR text holds a line break), so a
  broken quote costs one row, never the rest of the file. Rows are judged one by one
  and reported by physical line number (the header is line 1); good rows load even
  when others are refused.
* `scanned_at` must carry an offset (a time whose zone is a guess shifts contacts
  by hours); `qr_text` goes through the same `parse_qr` as at the door.
* An unknown venue refuses the row unless `add_venues`, which creates it with its id
  as its name. `device_id`, if present and a registered unit of that venue, links
  the scan to the unit; any other device (a guard's phone) is not recorded.
* Every row gets a deterministic scan id from venue, time and person (by pseudonym:
  `hub.scan_ids`), so importing the same file twice adds nothing (the second time,
  rows count as duplicates). A scan that also arrived over MQTT has a different id and
  is stored twice.

Cells that look like spreadsheet formulas (``=``, ``+``, ``-``, ``@``) are kept as
plain text and never evaluated; error messages quote cells with `repr`, truncated.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.payloads import parse_qr
from doorscan.timefmt import parse_rfc3339, to_ms, vietnam_day
from doorscan.wire import ID_PATTERN, VenueRecord
from doorscan.wire.limits import EARLIEST_SCAN, FUTURE_TOLERANCE_S
from hub.scan_ids import csv_scan_id
from hub.store import Store, StoredScan

__all__ = ["HEADER", "HEADER_WITH_DEVICE", "ImportReport", "import_csv", "csv_scan_id"]

HEADER = "venue_id,scanned_at,qr_text"
HEADER_WITH_DEVICE = HEADER + ",device_id"
# The same floor and tolerance as MQTT ingest (doorscan.wire.limits).
FUTURE_TOLERANCE = timedelta(seconds=FUTURE_TOLERANCE_S)
CHUNK_ROWS = 1000
"""Scans per transaction: bounds memory on big files; each chunk commits whole."""
_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class ImportReport:
    rows: int
    loaded: int
    duplicates: int
    errors: list[tuple[int, str]] = field(default_factory=list)


class _RowError(Exception):
    """One row is refused; the message says why."""


def _show(value: str, limit: int = 60) -> str:
    """A cell for an error message: repr escapes control and bidi characters."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _decode(data: bytes) -> str:
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data[:offset].count(b"\n") + 1
        raise Refusal(
            "csv_encoding",
            f"the file is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} "
            f"(line {line}); re-save it as UTF-8 (cp1258 and Latin-1 are not guessed)",
        ) from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # newline="" splits on \n, \r\n and \r, as csv does, and keeps the endings for it.
    return enumerate(io.StringIO(text, newline=""), start=1)


def import_csv(
    store: Store,
    path: str | Path,
    *,
    add_venues: bool,
    card_keys: CardKeyring | None,
    received_at: datetime,
) -> ImportReport:
    """Load the good rows of one CSV file; raise `Refusal` if the file as a whole is bad."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise Refusal("csv_unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
    lines = _lines(_decode(data))
    first = next(lines, None)
    header = first[1].rstrip("\r\n") if first else ""
    if header not in (HEADER, HEADER_WITH_DEVICE):
        raise Refusal(
            "csv_header",
            f"line 1 must be {HEADER!r} (optionally followed by ',device_id'), not {_show(header)}",
        )
    width = header.count(",") + 1
    known_venues = {v.venue_id for v in store.venues()}
    rows = loaded = duplicates = 0
    errors: list[tuple[int, str]] = []
    chunk: list[StoredScan] = []

    def flush() -> None:
        nonlocal loaded, duplicates
        result = store.insert_scans(chunk, received_at=received_at)
        loaded += len(result.new)
        duplicates += len(result.duplicate)
        chunk.clear()

    for number, line in lines:
        if not line.strip():
            continue
        rows += 1
        try:
            scan = _judge_row(store, line, width, known_venues, add_venues, card_keys, received_at)
        except _RowError as exc:
            errors.append((number, str(exc)))
            continue
        if scan.venue_id not in known_venues:
            store.upsert_venue(VenueRecord(venue_id=scan.venue_id, name=scan.venue_id))
            known_venues.add(scan.venue_id)
        chunk.append(scan)
        if len(chunk) >= CHUNK_ROWS:
            flush()
    flush()
    return ImportReport(rows=rows, loaded=loaded, duplicates=duplicates, errors=errors)


def _judge_row(
    store: Store,
    line: str,
    width: int,
    known_venues: set[str],
    add_venues: bool,
    card_keys: CardKeyring | None,
    received_at: datetime,
) -> StoredScan:
    try:
        fields = next(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise _RowError(f"broken quoting: {exc}") from None
    if len(fields) != width:
        raise _RowError(f"{len(fields)} fields where the header has {width}")
    venue_id, scanned_text, qr_text = fields[0].strip(), fields[1].strip(), fields[2]
    device_id = fields[3].strip() if width == 4 else ""
    if not _ID_RE.fullmatch(venue_id):
        raise _RowError(f"venue id {_show(venue_id)} is not a valid id")
    if venue_id not in known_venues and not add_venues:
        raise _RowError(f"unknown venue {venue_id} (use --add-venues)")
    scanned_at = _scan_time(scanned_text, received_at)
    try:
        identity = parse_qr(qr_text, card_keys=card_keys, today=vietnam_day(scanned_at))
    except Refusal as refusal:
        raise _RowError(f"qr_text {_show(qr_text, 40)} refused: {refusal.reason}") from None
    unit_id: str | None = None
    if device_id:
        unit = store.unit(device_id) if _ID_RE.fullmatch(device_id) else None
        if unit is not None and unit.venue_id != venue_id:
            raise _RowError(f"device {device_id} is a unit of {unit.venue_id}, not {venue_id}")
        unit_id = unit.unit_id if unit is not None else None
    at_ms = to_ms(scanned_at)
    return StoredScan(
        scan_id=csv_scan_id(venue_id, at_ms, store.pseudonym(identity.person_key)),
        unit_id=unit_id,
        venue_id=venue_id,
        scanned_at=scanned_at,
        clock_trusted=True,
        identity=identity,
        source="csv",
    )


def _scan_time(text: str, received_at: datetime) -> datetime:
    try:
        value = parse_rfc3339(text)
    except ValueError:
        try:
            datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise _RowError(
                f"scanned_at {_show(text)} is not an ISO 8601 time (e.g. 2021-08-15T09:30:00+07:00)"
            ) from None
        raise _RowError(f"scanned_at {_show(text)} has no UTC offset (add e.g. +07:00)") from None
    if value < EARLIEST_SCAN:
        raise _RowError(f"scanned_at {_show(text)} is before 2020")
    if value > received_at + FUTURE_TOLERANCE:
        raise _RowError(f"scanned_at {_show(text)} is in the future")
    return value
