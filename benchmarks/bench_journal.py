"""Journal commits: one scan recorded at a backlog of 0, 10 000 and 50 000 scans.

The journal is the real `ScanJournal` (SQLite, WAL, synchronous=FULL: every commit is
fsynced) in a folder on the machine's disk. The baseline is what the unit used
before it: TinyDB with its default storage (`JSONStorage`, one JSON file), inserting
the same scans at the same backlogs. TinyDB reads, parses and rewrites the whole file
on every insert and never fsyncs, so its cost grows with the backlog while the
journal's should not: that growth is the point of the comparison.

Backlogs are pre-filled in one transaction (SQLite: rows inserted directly into the
journal's table, on a file the journal made; TinyDB: one `insert_multiple`), then
`record()` / `insert()` is timed one scan at a time.

Bytes written per scan are the calling thread's ``write_bytes`` from
``/proc/thread-self/io`` (bytes sent towards the storage layer: WAL frames, and the
checkpoints into the main file that happen within the run) divided by the scans;
``wchar`` (bytes handed to write(), cached or not) and the growth of the files are in
benchmarks.json. Goal: ≤ 1 ms per commit and ≤ 16 KiB per scan.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tinydb import TinyDB

from benchmarks.report import Figure, Result, Samples
from benchmarks.scenes import code_texts
from device.journal import ScanJournal
from doorscan.timefmt import to_ms
from doorscan.wire import Scan

__all__ = ["run"]

SUBJECT = "Journal commit"
BACKLOGS = (0, 10_000, 50_000)
GOAL_MS = 1.0
GOAL_BYTES = 16 * 1024
_START = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
_WAL_FRAME_HEADER = 24  # bytes before each page in the WAL
_FRAMES_AFTER = 100  # commits over which WAL frames per commit are counted


def _io() -> dict[str, int]:
    """This thread's I/O counters (SQLite writes from the calling thread)."""
    fields = {}
    for line in Path("/proc/thread-self/io").read_text().splitlines():
        name, value = line.split(":")
        fields[name] = int(value)
    return fields


def _scans(count: int, offset: int, texts: list[str]) -> list[Scan]:
    return [
        Scan(
            scan_id=uuid.uuid4().hex,
            venue_id="bench-venue",
            scanned_at=_START + timedelta(seconds=offset + i),
            qr_text=texts[(offset + i) % len(texts)],
        )
        for i in range(count)
    ]


def _prefill_journal(path: Path, scans: list[Scan]) -> None:
    ScanJournal(path).close()  # the journal makes its own file and schema
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO scans (scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text)"
            " VALUES (?, ?, ?, 1, ?)",
            [(s.scan_id, s.venue_id, to_ms(s.scanned_at), s.qr_text) for s in scans],
        )
    conn.close()


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _time_journal(path: Path, scans: list[Scan]) -> tuple[Samples, dict[str, float]]:
    with ScanJournal(path) as journal:
        journal.record(_scans(1, 10**7, ["warm-up"])[0])  # opens the WAL
        page_size = _page_size(path)
        before, size_before = _io(), _sizes(path.parent)
        wal = path.with_name(path.name + "-wal")
        wal_before, wal_frames = wal.stat().st_size, 0.0
        count_until = min(_FRAMES_AFTER, len(scans))
        times = []
        for i, scan in enumerate(scans, 1):
            start = time.perf_counter_ns()
            journal.record(scan)
            times.append(time.perf_counter_ns() - start)
            if i == count_until:
                # The WAL file only grows until the first checkpoint (1000 pages), which
                # these first commits do not reach: its growth is their frames.
                wal_frames = (wal.stat().st_size - wal_before) / i / (page_size + _WAL_FRAME_HEADER)
        after, size_after = _io(), _sizes(path.parent)
    return Samples(tuple(times)), {
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "wchar": after["wchar"] - before["wchar"],
        "file_growth": size_after - size_before,
        "wal_frames_per_commit": round(wal_frames, 2),
        "page_size": page_size,
    }


def _time_tinydb(
    path: Path, backlog: list[Scan], scans: list[Scan]
) -> tuple[Samples, dict[str, int]]:
    with TinyDB(path) as db:  # the default: JSONStorage
        if backlog:
            db.insert_multiple(s.model_dump(mode="json") for s in backlog)
        else:
            # Warm-up on an empty file only: insert_multiple has already run the whole
            # path, and one more insert at 50 000 would cost seconds for nothing.
            db.insert(_scans(1, 10**7, ["warm-up"])[0].model_dump(mode="json"))
        before, size_before = _io(), path.stat().st_size
        times = []
        for scan in scans:
            record = scan.model_dump(mode="json")
            start = time.perf_counter_ns()
            db.insert(record)
            times.append(time.perf_counter_ns() - start)
        after, size_after = _io(), path.stat().st_size
    return Samples(tuple(times)), {
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "wchar": after["wchar"] - before["wchar"],
        "file_growth": size_after - size_before,
    }


def _time_fsync(folder: Path, count: int) -> Samples:
    """A bare 4 KiB append + fsync in the same folder: the floor under any durable commit."""
    times = []
    fd = os.open(folder / "fsync-floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 4096
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(fd, block)
            os.fsync(fd)
            times.append(time.perf_counter_ns() - start)
    finally:
        os.close(fd)
    return Samples(tuple(times))


def run(quick: bool, tmp: Path) -> Result:
    texts = [text for _, text in code_texts(300, seed=31)]
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        floor = _time_fsync(Path(folder), 30 if quick else 300)
    raw["fsync_floor"] = floor.summary()
    figures.append(
        Figure(SUBJECT, "bare 4 KiB write + fsync on this disk, median", floor.median_ms, "ms",
               note="not a goal: the least any commit that survives a power cut can cost here")
    )  # fmt: skip
    for backlog in BACKLOGS:
        timed = 30 if quick else 1000
        # TinyDB at 50 000 takes a good part of a second per insert: fewer samples.
        tiny_timed = (5 if quick else 40) if backlog < 50_000 else (1 if quick else 15)
        backlog_scans = _scans(backlog, 0, texts)
        new = _scans(timed, backlog, texts)
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            path = Path(folder) / "journal.db"
            if backlog:
                _prefill_journal(path, backlog_scans)
            journal, journal_io = _time_journal(path, new)
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            tiny, tiny_io = _time_tinydb(Path(folder) / "db.json", backlog_scans, new[:tiny_timed])
        per_scan = journal_io["write_bytes"] / timed
        frames, page = journal_io["wal_frames_per_commit"], int(journal_io["page_size"])
        slow_note = (
            f"a commit that survives a power cut costs at least one fsync, {floor.median_ms:.2g}"
            " ms median on this disk (first row); the goal is below that floor"
            if journal.median_ms > GOAL_MS
            else ""
        )
        bytes_note = (
            f"each commit appends {frames:.1f} WAL frames of a whole {page / 1024:g} KiB page"
            " (the table leaf, the scan_id index leaf, the pending index leaf; ~{:.1f} KiB),"
            " and the checkpoints copy those pages into the main file again; the kernel"
            " counts whole 4 KiB pages it dirties; random uuid4 scan_ids spread the index"
            " writes over more pages as the file grows"
        ).format(frames * (page + _WAL_FRAME_HEADER) / 1024)
        tiny_per_scan = tiny_io["write_bytes"] / tiny_timed
        label = f"backlog {backlog:,}"
        figures += [
            Figure(SUBJECT, f"ScanJournal.record(), {label}, median", journal.median_ms, "ms",
                   tiny.median_ms, "TinyDB insert, median", f"≤ {GOAL_MS:g} ms",
                   journal.median_ms <= GOAL_MS, slow_note),
            Figure(SUBJECT, f"ScanJournal.record(), {label}, p99", journal.p99_ms, "ms",
                   tiny.p99_ms, "TinyDB insert, p99"),
            Figure(SUBJECT, f"bytes written per scan, {label}", per_scan / 1024, "KiB",
                   tiny_per_scan / 1024, "TinyDB", f"≤ {GOAL_BYTES // 1024} KiB",
                   per_scan <= GOAL_BYTES, bytes_note),
        ]  # fmt: skip
        raw[label] = {
            "journal": {**journal.summary(), **journal_io},
            "tinydb": {**tiny.summary(), **tiny_io},
        }
    text = __doc__.split("\n", 1)[1] + (
        "\nThe goal on commit time is judged on the median; p99 is shown beside it. Each"
        " scan carries a CCCD, health or visitor-card text unsealed (about 100-150 bytes)."
    )
    return Result(figures, raw, text)
