"""Hub ingest against its floor: the real ingestor beside the least the same rows can cost.

Both sides take the same kind of messages (500 CCCD scans per batch, as a unit sends
its backlog, from 20 units) and end with the same rows committed, one transaction per
batch, on the same kind of database:

* **Hub**: `hub.ingest.Ingestor.handle` on each message, as the MQTT service calls it
  (no broker: `bench_hub_ingest` measures that): read and validate the batch, judge
  every scan (registry, times, the CCCD's fields), seal and blind, insert, build the ack.
* **Floor**: only what no design can skip. ``json.loads`` of the message; per scan the
  cryptography the stored row needs (the identity sealed with XChaCha20-Poly1305 under
  a fresh nonce; the person's and the name's pseudonyms and the content digest, three
  HMAC-SHA256) over the QR text as it came, not parsed or checked; then the batch's
  rows in one statement (SQLite ``executemany``; PostgreSQL ``COPY``, with the scan ids
  claimed through ``scan_ids`` as the store must, to refuse an id twice) and the commit.

Each is run on an empty database and on the trace benchmark's data set (5 000 000
scans at full size; ``benchmarks.tracedata``): SQLite on a copy of its file; PostgreSQL
in its schema, where the rows land in today's partition and ``scan_ids`` and
``batches`` hold the whole set's ids (they are deleted again afterwards). Rounds
alternate hub and floor; figures are medians over the rounds, in scans per second.
Goal: the hub at ≥ 0.5 × its floor, into the loaded database, on both backends.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.bench_hub_ingest import Message, make_messages, register_units
from benchmarks.report import Figure, Result
from benchmarks.tracedata import (
    CACHE,
    TraceData,
    bench_schema,
    discard_postgres_copy,
    open_trace_data,
)
from hub.ingest import Ingestor
from hub.store.common import SCAN_COLUMNS, scan_aad
from hub.store.factory import open_hub_store
from hub.vault import Vault

__all__ = ["GOAL_FLOOR_SHARE", "SUBJECT", "run"]

SUBJECT = "Hub ingest against its floor"
GOAL_FLOOR_SHARE = 0.5
PER_BATCH = 500

_SQLITE_INSERT = (
    f"INSERT INTO scans ({SCAN_COLUMNS}, content_digest, id_number, name) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '')"
)
_PG_CLAIM = (
    "INSERT INTO scan_ids (scan_id, scanned_at_ms, digest) "
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[]) ON CONFLICT DO NOTHING"
)


def _floor_rows(vault: Vault, payload: bytes, received_ms: int) -> list[tuple[Any, ...]]:
    """The rows of one batch, with only the unavoidable work: parse, seal, blind, digest."""
    batch = json.loads(payload)
    unit_id = batch["unit_id"]
    rows = []
    for scan in batch["scans"]:
        text: str = scan["qr_text"]
        fields = text.split("|", 3)
        # Milliseconds from the text's own digits: the floor parses no datetime either.
        at_ms = _iso_ms(scan["scanned_at"])
        rows.append(
            (
                scan["scan_id"],
                unit_id,
                scan["venue_id"],
                at_ms,
                True,
                vault.blind("id:" + fields[0]),
                "cccd",
                vault.seal(text.encode("utf-8"), scan_aad(scan["scan_id"])),
                "mqtt",
                received_ms,
                vault.blind("name:" + fields[2]),
                vault.content_digest(text.encode("utf-8")),
            )
        )
    return rows


def _iso_ms(text: str) -> int:
    # "2026-12-05T11:34:40.325Z": the calendar to days by the civil-from-days formula.
    year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
    return (days * 86400 + seconds) * 1000 + int(text[20:23])


@contextmanager
def _sqlite_floor(path: str, vault: Vault) -> Iterator[Callable[[Sequence[Message]], None]]:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    # As the store sets them: the floor commits as durably as the hub does.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")

    def ingest(messages: Sequence[Message]) -> None:
        for _, payload in messages:
            rows = _floor_rows(vault, payload, int(time.time() * 1000))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_SQLITE_INSERT, rows)
            conn.execute("COMMIT")

    try:
        yield ingest
    finally:
        conn.close()


@contextmanager
def _postgres_floor(url: str, vault: Vault) -> Iterator[Callable[[Sequence[Message]], None]]:
    import psycopg

    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.commit()

        def ingest(messages: Sequence[Message]) -> None:
            for _, payload in messages:
                rows = _floor_rows(vault, payload, int(time.time() * 1000))
                with conn.cursor() as cursor:
                    cursor.execute(
                        _PG_CLAIM,
                        ([r[0] for r in rows], [r[3] for r in rows], [r[11] for r in rows]),
                    )
                    with cursor.copy(f"COPY scans ({SCAN_COLUMNS}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row[:11])
                conn.commit()

        yield ingest


def _hub(store: Any) -> Callable[[Sequence[Message]], None]:
    ingestor = Ingestor(store)  # flood bound on, as in production (`make_messages`)

    def ingest(messages: Sequence[Message]) -> None:
        for topic, payload in messages:
            ingestor.handle(topic, payload)
        if ingestor.counters.dead_letters:
            raise RuntimeError(f"the hub refused bench scans: {ingestor.counters.refusals}")

    return ingest


def _rates(
    locator: str, vault: Vault, backend: str, batches: int, rounds: int
) -> tuple[list[float], list[float]]:
    """(hub scans/s, floor scans/s) per round, on the database at `locator`."""
    hub_rates: list[float] = []
    floor_rates: list[float] = []
    floors = _sqlite_floor if backend == "sqlite" else _postgres_floor
    with open_hub_store(locator, vault=vault) as store, floors(locator, vault) as floor:
        hub = _hub(store)
        fleets = iter(range(1_000))

        def messages(scans: int) -> list[Message]:
            # Units of their own for each set: scans dated alike from other units.
            fleet = f"-{next(fleets)}"
            register_units(store, fleet=fleet)
            return make_messages(scans, PER_BATCH, fleet=fleet)

        # One warm-up batch each: today's partition, caches, the planner.
        hub(messages(PER_BATCH))
        floor(messages(PER_BATCH))
        for _ in range(rounds):
            for rates, ingest in ((hub_rates, hub), (floor_rates, floor)):
                batch_messages = messages(batches * PER_BATCH)
                started = time.perf_counter()
                ingest(batch_messages)
                rates.append(batches * PER_BATCH / (time.perf_counter() - started))
    return hub_rates, floor_rates


@contextmanager
def _databases(
    backend: str, loaded: TraceData, tmp: Path
) -> Iterator[list[tuple[str, str, Vault]]]:
    """(label, locator, vault) of an empty database and of the loaded one."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(dir=tmp) as where:
            copy = Path(where) / "loaded.db"
            shutil.copyfile(loaded.locator, copy)
            yield [
                ("empty", str(Path(where) / "empty.db"), Vault.generate()),
                (f"{loaded.spec.scans:,} scans", str(copy), loaded.vault),
            ]
        return
    with bench_schema("bench_floor") as empty:
        try:
            yield [
                ("empty", empty, Vault.generate()),
                (f"{loaded.spec.scans:,} scans", loaded.locator, loaded.vault),
            ]
        finally:
            _forget_bench_rows(loaded.locator)


def _forget_bench_rows(url: str) -> None:
    """Take this benchmark's rows out of the trace set again (they are all dated today)."""
    import psycopg

    day_ms = 86_400_000
    since = (int(time.time() * 1000) // day_ms - 2) * day_ms
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM scans WHERE scanned_at_ms >= %s", (since,))
        conn.execute("DELETE FROM scan_ids WHERE scanned_at_ms >= %s", (since,))
        conn.execute("DELETE FROM batches WHERE unit_id LIKE 'bench%%-unit-%%'")
        conn.execute("DELETE FROM units WHERE unit_id LIKE 'bench%%-unit-%%'")
        conn.execute("DELETE FROM venues WHERE venue_id LIKE 'bench%%-venue-%%'")


def run(quick: bool, tmp: Path, *, scale: float = 1.0, cache: Path = CACHE) -> Result:
    from benchmarks.bench_trace import backends, spec_for  # the data set the trace reads

    batches, rounds = (2, 1) if quick else (20, 3)
    spec = spec_for(quick, scale)
    figures: list[Figure] = []
    raw: dict[str, Any] = {"batches_per_round": batches, "scans_per_batch": PER_BATCH}
    for backend in backends():
        loaded = open_trace_data(spec, backend, cache)
        figures.append(_stored_size(backend, loaded))
        try:
            with _databases(backend, loaded, tmp) as databases:
                for label, locator, vault in databases:
                    figures.append(_figure(backend, label, locator, vault, batches, rounds, raw))
        finally:
            if cache.resolve() != CACHE.resolve():
                discard_postgres_copy(loaded)  # a temporary cache's copy would outlive it
    return Result(figures, raw, __doc__.split("\n", 1)[1].strip())


def _stored_size(backend: str, data: TraceData) -> Figure:
    """Bytes on disk per scan of the loaded data set, with every index (read before the
    benchmark adds its own rows)."""
    if backend == "sqlite":
        size = sum(
            Path(data.locator + suffix).stat().st_size
            for suffix in ("", "-wal")
            if Path(data.locator + suffix).exists()
        )
        how = "the file and its WAL"
    else:
        import psycopg

        with psycopg.connect(data.locator) as conn:
            row = conn.execute(
                "SELECT sum(pg_total_relation_size(format('%%I.%%I', schemaname, tablename))) "
                "FROM pg_tables WHERE schemaname = %s",
                (data.schema,),
            ).fetchone()
        size = int(row[0]) if row and row[0] is not None else 0
        how = "pg_total_relation_size of every table of its schema"
    return Figure(
        SUBJECT,
        f"stored size per scan, {backend}, {data.spec.scans:,}-scan data set",
        size / data.spec.scans,
        "B",
        note=f"{size:,} bytes ({how}), indexes included",
    )


def _figure(
    backend: str,
    label: str,
    locator: str,
    vault: Vault,
    batches: int,
    rounds: int,
    raw: dict[str, Any],
) -> Figure:
    hub_rates, floor_rates = _rates(locator, vault, backend, batches, rounds)
    hub, floor = statistics.median(hub_rates), statistics.median(floor_rates)
    raw[f"{backend}, {label}"] = {"hub_scans_per_s": hub_rates, "floor_scans_per_s": floor_rates}
    judged = label != "empty"  # the goal is set on the loaded database
    return Figure(
        SUBJECT,
        f"hub, 500-scan batches, {backend}, into {label} database",
        hub,
        "scans/s",
        goal=f"≥ {GOAL_FLOOR_SHARE} × floor" if judged else "",
        met=hub >= GOAL_FLOOR_SHARE * floor if judged else None,
        note=f"{1e6 / hub:.0f} µs per scan; the floor {1e6 / floor:.0f} µs",
        floor=floor,
        floor_name="parse, seal, blind, one bulk insert and commit",
    )
