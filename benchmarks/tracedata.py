"""The trace benchmark's data set: generated people, venues and scans, cached on disk.

The shape (deterministic for a seed): venues belong to districts and open at the
hours of their kind (a market from 5 to 12, a shop or eatery from 7 to 21, an office
from 7 to 17, local time UTC+7); venue popularity is skewed (log-normal). Each person has a
home district and a handful of regular venues (four near home, one elsewhere, where
they work or study). A day's scans are drawn as outings: a person picked at random
visits 1 to 4 venues that day, mostly regulars, sometimes another venue of the home
district, rarely anywhere, each at a time when the venue is open.

Everything is written through the store's real insert path (`insert_scans`, 5 000
scans per transaction, each identity sealed and blinded by the vault), so the file
is what a hub that received these scans would hold.

Cache: ``benchmarks/.cache/trace-<key>/`` keyed by generator version, seed, sizes
and the store's schema version, with the vault key beside the database (a store
refuses another key). PostgreSQL's copy is a schema ``trace_<key hash>`` in the
bench database (`BENCH_PG`), never in the tests' database; a marker file in the
cache folder says it is complete.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm  # type: ignore[import-untyped]

from doorscan.payloads import Identity, parse_qr
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import UnitRecord, VenueRecord
from hub.store import Store, StoredScan
from hub.store.factory import open_hub_store
from hub.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA
from hub.vault import Vault

__all__ = [
    "BENCH_PG",
    "CACHE",
    "GENERATOR_VERSION",
    "TraceData",
    "TraceSpec",
    "bench_schema",
    "discard_postgres_copy",
    "open_trace_data",
    "schema_url",
]

GENERATOR_VERSION = 1
CACHE = Path(__file__).resolve().parent / ".cache"
BENCH_PG = os.environ.get(
    "DOORSCAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/doorscan_bench"
)
"""The benchmarks' own database (created when missing), apart from the tests' ``test``."""
START = datetime(2022, 1, 3, tzinfo=UTC)
INSERT_BATCH = 5000
_LOCAL = timedelta(hours=7)
_KINDS = ((5, 12), (7, 21), (7, 21), (7, 17))  # opening hours (local) per venue kind


@dataclass(frozen=True)
class TraceSpec:
    """The data set's sizes and seed; the issue's defaults."""

    scans: int = 5_000_000
    people: int = 200_000
    venues: int = 2_000
    days: int = 28
    seed: int = 2022

    def key(self, backend: str, schema_version: int) -> str:
        return (
            f"g{GENERATOR_VERSION}-seed{self.seed}-{self.scans}s-{self.people}p-{self.venues}v-"
            f"{self.days}d-{backend}{schema_version}"
        )

    @property
    def end(self) -> datetime:
        return START + timedelta(days=self.days)


@dataclass(frozen=True)
class TraceData:
    """A ready data set: where it is, its vault, who scanned, how long generation took."""

    locator: str
    vault: Vault
    spec: TraceSpec
    person_keys: list[str]
    generated_s: float | None  # None: taken from the cache
    cache_folder: Path
    schema: str | None = None  # PostgreSQL: the schema holding it

    def cached_note(self) -> str:
        """How long the cached set took to generate, and when (from its marker file)."""
        try:
            made = json.loads((self.cache_folder / "complete.json").read_text())
            return f"generated in {made['seconds']:.0f} s at {made['at']}"
        except (OSError, ValueError, KeyError):
            return "generation time not recorded"


def discard_postgres_copy(data: TraceData) -> None:
    """Drop a data set's PostgreSQL schema (for sets cached in a temporary folder)."""
    if data.schema is not None:
        _drop_schema(data.schema)
        # The marker would otherwise vouch for a schema that is gone.
        (data.cache_folder / "complete.json").unlink(missing_ok=True)


def venue_id(number: int) -> str:
    return f"venue-{number:04d}"


def _districts(spec: TraceSpec) -> int:
    return max(1, spec.venues // 100)


def _scan_rows(spec: TraceSpec, identities: list[Identity]) -> Iterator[StoredScan]:
    """Every scan of the data set, in time order within each day."""
    rng = random.Random(spec.seed)
    districts = _districts(spec)
    kind = [rng.randrange(len(_KINDS)) for _ in range(spec.venues)]
    # Footfall is skewed (a market against a pharmacy) but bounded: a log-normal, not a
    # Pareto, whose busiest venues would hold a sizeable share of the whole town.
    weight = [rng.lognormvariate(0.0, 1.0) for _ in range(spec.venues)]
    by_district: list[list[int]] = [[] for _ in range(districts)]
    for v in range(spec.venues):
        by_district[v % districts].append(v)
    cumulative = [_cumulative([weight[v] for v in venues]) for venues in by_district]
    everywhere = _cumulative(weight)

    def pick(district: int) -> int:
        venues = by_district[district]
        return venues[bisect.bisect(cumulative[district], rng.random() * cumulative[district][-1])]

    home = [rng.randrange(districts) for _ in range(spec.people)]
    regulars = [
        [pick(home[p]) for _ in range(4)] + [pick(rng.randrange(districts))]
        for p in range(spec.people)
    ]
    for day in range(spec.days):
        quota = spec.scans // spec.days + (1 if day < spec.scans % spec.days else 0)
        midnight_utc = START + timedelta(days=day) - _LOCAL
        visits: list[tuple[int, int, int]] = []  # (at_ms, person, venue)
        while len(visits) < quota:
            person = rng.randrange(spec.people)
            for _ in range(min(rng.choice((1, 2, 2, 3, 3, 4)), quota - len(visits))):
                roll = rng.random()
                if roll < 0.8:
                    venue = rng.choice(regulars[person])
                elif roll < 0.95:
                    venue = pick(home[person])
                else:
                    venue = bisect.bisect(everywhere, rng.random() * everywhere[-1])
                opens, closes = _KINDS[kind[venue]]
                at_s = rng.randrange(opens * 3600, closes * 3600)
                at_ms = int((midnight_utc + timedelta(seconds=at_s)).timestamp() * 1000)
                visits.append((at_ms + rng.randrange(1000), person, venue))
        visits.sort()
        for n, (at_ms, person, venue) in enumerate(visits):
            yield StoredScan(
                scan_id=f"t{day:02d}{n:08d}",
                unit_id=f"unit-{venue:04d}",
                venue_id=venue_id(venue),
                scanned_at=datetime.fromtimestamp(at_ms / 1000, UTC),
                clock_trusted=True,
                identity=identities[person],
                source="mqtt",
            )


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def _identities(spec: TraceSpec) -> list[Identity]:
    """Each person's identity as the hub's parser reads their CCCD (parsed once each)."""
    today = START.date()
    return [parse_qr(cccd_text(p), today=today) for p in make_people(spec.people, seed=spec.seed)]


def _fill(store: Store, spec: TraceSpec, label: str) -> None:
    for v in range(spec.venues):
        district = f"district-{v % _districts(spec):02d}"
        store.upsert_venue(VenueRecord(venue_id=venue_id(v), name=f"Điểm {v}", district=district))
        store.upsert_unit(UnitRecord(unit_id=f"unit-{v:04d}", venue_id=venue_id(v)))
    batch: list[StoredScan] = []
    with tqdm(total=spec.scans, desc=f"trace data ({label})", unit="scan", file=sys.stderr,
              unit_scale=True, mininterval=2.0) as bar:  # fmt: skip
        for scan in _scan_rows(spec, _identities(spec)):
            batch.append(scan)
            if len(batch) == INSERT_BATCH:
                store.insert_scans(batch, received_at=batch[-1].scanned_at)
                bar.update(len(batch))
                batch = []
        if batch:
            store.insert_scans(batch, received_at=batch[-1].scanned_at)
            bar.update(len(batch))


def _vault(folder: Path) -> Vault:
    path = folder / "vault.key"
    if path.exists():
        return Vault.load(path)
    folder.mkdir(parents=True, exist_ok=True)
    vault = Vault.generate()
    vault.save(path)
    return vault


def _person_keys(spec: TraceSpec) -> list[str]:
    return [p.person_key for p in make_people(spec.people, seed=spec.seed)]


def open_trace_data(spec: TraceSpec, backend: str, cache: Path = CACHE) -> TraceData:
    """The data set on `backend` ("sqlite" or "postgresql"), generated unless cached."""
    if backend == "sqlite":
        key = spec.key("sqlite", SQLITE_SCHEMA)
    else:
        from hub.store.postgres import SCHEMA_VERSION as PG_SCHEMA  # type: ignore[import-not-found,unused-ignore]

        key = spec.key("postgresql", int(PG_SCHEMA))
    folder = cache / f"trace-{key}"
    marker = folder / "complete.json"
    schema = "trace_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    locator = str(folder / "hub.db") if backend == "sqlite" else schema_url(schema)
    on_pg = None if backend == "sqlite" else schema
    present = Path(locator).exists() if on_pg is None else _schema_exists(schema)
    if marker.exists() and present:
        vault = _vault(folder)
        if on_pg is not None:
            _analyze(on_pg)
        return TraceData(locator, vault, spec, _person_keys(spec), None, folder, on_pg)
    # An unfinished earlier run leaves a partial set: start again from nothing.
    shutil.rmtree(folder, ignore_errors=True)
    if backend != "sqlite":
        _drop_schema(schema)
        _create_schema(schema)
    vault = _vault(folder)
    started = time.monotonic()
    with open_hub_store(locator, vault=vault) as store:
        _fill(store, spec, backend)
    if on_pg is not None:
        _analyze(on_pg)
    seconds = time.monotonic() - started
    marker.write_text(
        json.dumps({"spec": asdict(spec), "key": key, "seconds": seconds, "at": _now()}) + "\n"
    )
    print(f"trace data ({backend}): generated {spec.scans:,} scans in {seconds:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    return TraceData(locator, vault, spec, _person_keys(spec), seconds, folder, on_pg)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- the benchmarks' PostgreSQL database -------------------------------------------------


def _ensure_database() -> None:
    import psycopg

    name = BENCH_PG.rsplit("/", 1)[1].split("?", 1)[0]
    maintenance = BENCH_PG.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def schema_url(schema: str) -> str:
    """`BENCH_PG` with its search_path set to `schema` (then public, for extensions)."""
    separator = "&" if "?" in BENCH_PG else "?"
    return f"{BENCH_PG}{separator}options={quote(f'-csearch_path={schema},public')}"


def _create_schema(schema: str) -> None:
    import psycopg

    _ensure_database()
    with psycopg.connect(BENCH_PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")


def _schema_exists(schema: str) -> bool:
    import psycopg

    _ensure_database()
    with psycopg.connect(BENCH_PG, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    return found is not None


def _analyze(schema: str) -> None:
    """Planner statistics and the visibility map for every table of the set, as autovacuum
    keeps them on a running hub. The benchmarks' cluster may run without autovacuum (this
    machine's does): a plan built on the default estimates (off by 100x on a 5 M-scan set)
    measures the estimate, not the query, and without a visibility map an Index Only Scan
    (the trace's reads) goes back to the table for every row. Run on a cached set too: on
    a set already vacuumed it costs seconds."""
    import psycopg

    with psycopg.connect(BENCH_PG, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'VACUUM (ANALYZE) "{schema}"."{table}"')


def _drop_schema(schema: str) -> None:
    import psycopg

    _ensure_database()
    with psycopg.connect(BENCH_PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextmanager
def bench_schema(prefix: str = "bench") -> Iterator[str]:
    """A fresh schema in the bench database for one measurement, dropped afterwards."""
    schema = f"{prefix}_{os.urandom(6).hex()}"
    _create_schema(schema)
    try:
        yield schema_url(schema)
    finally:
        _drop_schema(schema)
