"""Trace latency on a generated data set, against a brute-force scan of the same data.

The data set (`benchmarks.tracedata`: 5 000 000 scans, 200 000 people, 2 000 venues,
28 days at full size) is generated once through the store's real insert path and
cached. Index people are drawn at random (fixed seed) among those with a check-in in
the period; each is traced through the real engine (`hub.trace.trace` on one read
snapshot, `CheckinReader.trace_reader`, as `hub.access` runs it for the dashboard and
the API: each degree's windows read from a narrow covering index, the whole answer
found and counted by pseudonym, the first page of 100 contacts named) at depth 1 (F1)
and depth 2 (F2), over the data set's last 14 days with the default one-hour window.
For the first few index people the F2 is also traced as an export (every contact
named), for context.
The audit entry the access layer writes is left out: it is one small commit, not the
trace.

Baseline, in the same run: the same answer by brute force. One SQL statement reads
every row of the period with no index (SQLite ``NOT INDEXED``; PostgreSQL with index
and bitmap scans switched off), then the rule of `hub.trace` is applied in memory by
a separate, plain implementation (each venue's rows sorted by time in a list). Brute-force
F1 time is that read plus depth 1, F2 the read plus depth 2 (one read serves both,
as it would). It is slow, so it runs for a few index people only (the first ones
traced); for each of them
its answer (who, at which degree, exposed when) must equal the engine's, or the
benchmark stops: the figures are only worth quoting if the engine is right.

Floor, in the same run, for every index person traced: the least the answer can cost.
One set-based SQL statement computes the same F1 (and, in another, F1 and F2) inside
the database: a self-join of the person's check-ins with the covering index on venue
and time, grouped by the person met (`FLOOR_F1_SQL`, `FLOOR_F2_SQL`). It returns
pseudonyms and exposure times and opens no identity, which the engine does for the
contacts of its first page; its whole answer must equal the engine's too. Engine / floor is how far
the engine is from what the database alone can do.

Goals: first page of F1 p95 ≤ 20 ms, first page of F2 p95 ≤ 300 ms.
"""

from __future__ import annotations

import bisect
import random
import re
import sqlite3
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.report import Figure, Result, percentile
from benchmarks.tracedata import (
    CACHE,
    TraceData,
    TraceSpec,
    discard_postgres_copy,
    open_trace_data,
)
from doorscan.timefmt import to_ms
from hub.store import TraceReader
from hub.store.factory import is_postgres, open_hub_store
from hub.trace import DEFAULT_WINDOW, Contact, Finding, TracePage, TraceParams, find, trace

__all__ = ["FLOOR_F1_SQL", "FLOOR_F2_SQL", "SUBJECT", "brute_force", "run", "spec_for"]

SUBJECT = "Hub trace"
GOAL_F1_MS = 20.0
GOAL_F2_MS = 300.0
PERIOD = timedelta(days=14)
Answer = dict[str, tuple[int, int]]  # pseudonym -> (degree, exposed at ms)


def spec_for(quick: bool, scale: float = 1.0) -> TraceSpec:
    """The issue's sizes times `scale`; --quick is a 5 000-scan set."""
    if quick:
        return TraceSpec(scans=5_000, people=500, venues=40)
    full = TraceSpec()
    return TraceSpec(
        scans=max(1000, int(full.scans * scale)),
        people=max(100, int(full.people * scale)),
        venues=max(10, int(full.venues * scale)),
    )


def backends() -> list[str]:
    """SQLite, and PostgreSQL once its store is in this tree."""
    found = ["sqlite"]
    if (Path(__file__).resolve().parents[1] / "hub" / "store" / "postgres.py").exists():
        found.append("postgresql")
    return found


def _full_scan(locator: str, since_ms: int, until_ms: int) -> list[tuple[str, int, str]]:
    """Every row of the period, read without an index: (venue_id, at_ms, pseudonym)."""
    if is_postgres(locator):
        import psycopg

        with psycopg.connect(locator) as conn:
            for knob in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                conn.execute(f"SET {knob} = off")
            return list(
                conn.execute(
                    "SELECT venue_id, scanned_at_ms, person_key FROM scans "
                    "WHERE scanned_at_ms BETWEEN %s AND %s",
                    (since_ms, until_ms),
                )
            )
    lite = sqlite3.connect(f"file:{locator}?mode=ro", uri=True)
    try:
        return lite.execute(
            "SELECT venue_id, scanned_at_ms, person_key FROM scans NOT INDEXED "
            "WHERE scanned_at_ms BETWEEN ? AND ?",
            (since_ms, until_ms),
        ).fetchall()
    finally:
        lite.close()


def brute_force(
    rows: list[tuple[str, int, str]], index: str, window_ms: int, depth: int
) -> list[Answer]:
    """The trace rule over rows already clipped to the period; one answer per depth 1..depth.

    Written apart from `hub.trace` on purpose (no range queries, no shared code): each
    found person's check-ins are compared with the check-ins of the same venue, held in
    memory sorted by time (a bisection finds the window's start).
    """
    by_venue: dict[str, list[tuple[int, str]]] = defaultdict(list)
    by_person: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for venue, at_ms, person in rows:
        by_venue[venue].append((at_ms, person))
        by_person[person].append((venue, at_ms))
    for in_time_order in by_venue.values():
        in_time_order.sort()
    found: Answer = {}
    exposed: dict[str, int | None] = {index: None}
    frontier, answers = [index], []
    for degree in range(1, depth + 1):
        best: dict[str, int] = {}
        for p in frontier:
            since = exposed[p]
            for venue, t in by_person.get(p, []):
                rows_here = by_venue[venue]
                first = bisect.bisect_left(rows_here, (t - window_ms, ""))
                for t2, q in rows_here[first:]:
                    if t2 > t + window_ms:
                        break
                    if q in exposed:
                        continue
                    event = max(t, t2)
                    if since is not None and event < since:
                        continue  # p met q before p carried anything
                    if q not in best or event < best[q]:
                        best[q] = event
        for q, event in best.items():
            exposed[q] = event
            found[q] = (degree, event)
        frontier = list(best)
        answers.append(dict(found))
    return answers


def _answer(finding: Finding) -> Answer:
    return {r.pseudonym: (r.degree, r.exposed_ms) for r in finding.reached}


def _first_page(reader: TraceReader, params: TraceParams) -> tuple[Finding, list[Contact]]:
    """What the dashboard and the API answer first (`hub.trace.trace` with page 1), in
    its two steps, so the whole answer can be checked against the floor's afterwards."""
    finding = find(reader, params)
    finding.summary()
    return finding, finding.open(reader, TracePage(1).of(finding.reached))


# The later of two times, in SQL both backends run (SQLite's MAX(a, b) is not PostgreSQL's).
_EVENT = "CASE WHEN {a} > {b} THEN {a} ELSE {b} END"


def _floor_sql(depth: int, lateral: bool) -> str:
    """The floor's statement: F1 (depth 1), or F1 and F2, by pseudonym; see `FLOOR_F1_SQL`.

    With `lateral` (PostgreSQL) each join to ``scans`` is a ``LATERAL`` subquery that
    cannot be flattened, as in the store's own trace reads: with plain joins its planner,
    misjudging the F1's size 25-fold, merge-joined the F2 on the venue alone and took
    seconds. SQLite has no ``LATERAL``, and needs none: it walks the joins in order.
    """

    def near(venue: str, at: str) -> str:
        window = f"BETWEEN {at} - :window AND {at} + :window"
        if lateral:
            return (
                "CROSS JOIN LATERAL (SELECT person_key, scanned_at_ms FROM scans "
                f"WHERE venue_id = {venue} AND scanned_at_ms {window} "
                "AND scanned_at_ms BETWEEN :since AND :until OFFSET 0) AS o"
            )
        # The period in the WHERE, apart: given both ranges in the ON, SQLite searched the
        # index by the period's and filtered by the window's (7 times slower).
        return f"JOIN scans o ON o.venue_id = {venue} AND o.scanned_at_ms {window}"

    def visits(who: str) -> str:
        if lateral:
            return (
                "CROSS JOIN LATERAL (SELECT venue_id, scanned_at_ms FROM scans "
                f"WHERE person_key = {who} AND scanned_at_ms BETWEEN :since AND :until "
                "OFFSET 0) AS v"
            )
        return f"JOIN scans v ON v.person_key = {who} AND v.scanned_at_ms BETWEEN :since AND :until"

    in_period = "" if lateral else "o.scanned_at_ms BETWEEN :since AND :until AND "
    f1 = (
        "SELECT o.person_key, MIN("
        + _EVENT.format(a="o.scanned_at_ms", b="i.scanned_at_ms")
        + ") AS exposed FROM (SELECT venue_id, scanned_at_ms FROM scans "
        "WHERE person_key = :index AND scanned_at_ms BETWEEN :since AND :until) AS i "
        + near("i.venue_id", "i.scanned_at_ms")
        + f" WHERE {in_period}o.person_key <> :index GROUP BY o.person_key"
    )
    if depth == 1:
        return f"SELECT person_key, 1, exposed FROM ({f1}) AS f1"
    event = _EVENT.format(a="o.scanned_at_ms", b="v.t")
    return (
        f"WITH f1 AS ({f1}), "
        "f1_visits AS (SELECT v.venue_id, v.scanned_at_ms AS t, f1.exposed FROM f1 "
        + visits("f1.person_key")
        + "), "
        f"f2 AS (SELECT o.person_key, MIN({event}) AS exposed FROM f1_visits v "
        + near("v.venue_id", "v.t")
        + f" WHERE {in_period}{event} >= v.exposed "
        "AND o.person_key <> :index AND o.person_key NOT IN (SELECT person_key FROM f1) "
        "GROUP BY o.person_key) "
        "SELECT person_key, 1, exposed FROM f1 UNION ALL SELECT person_key, 2, exposed FROM f2"
    )


FLOOR_F1_SQL = _floor_sql(1, lateral=False)
"""The F1 by pseudonym as one statement: the index's check-ins joined to everyone's at the
same venue within the window (the covering index on venue and time), earliest per person."""
FLOOR_F2_SQL = _floor_sql(2, lateral=False)
"""F1 and F2 by pseudonym as one statement: F1's check-ins (person index) joined to the
venue index again, an event counting from the F1 person's exposure on."""


class _Floor:
    """The floor statements on a connection of their own (read-only for SQLite)."""

    def __init__(self, locator: str) -> None:
        self._pg = is_postgres(locator)
        if self._pg:
            import psycopg

            self._conn: Any = psycopg.connect(locator, autocommit=True)
            # As in the store's trace snapshot: compiling is not worth it at these sizes,
            # nor is starting parallel workers (3 ms, for a few milliseconds of probes).
            self._conn.execute("SET jit = off")
            self._conn.execute("SET max_parallel_workers_per_gather = 0")
        else:
            self._conn = sqlite3.connect(f"file:{locator}?mode=ro", uri=True)

    def answer(
        self, depth: int, index: str, since_ms: int, until_ms: int, window_ms: int
    ) -> Answer:
        sql = _floor_sql(depth, lateral=self._pg)
        if self._pg:
            sql = re.sub(r":(\w+)", r"%(\1)s", sql)
        params = {"index": index, "since": since_ms, "until": until_ms, "window": window_ms}
        rows = self._conn.execute(sql, params).fetchall()
        return {str(who): (int(degree), int(exposed)) for who, degree, exposed in rows}

    def close(self) -> None:
        self._conn.close()


def _measure(data: TraceData, queries: int, brute: int, budget_s: float) -> dict[str, Any]:
    """Engine and floor F1 and F2 per index person, then brute force for the first `brute`."""
    until = data.spec.end
    since = until - PERIOD
    since_ms, until_ms = to_ms(since), to_ms(until)
    window_ms = DEFAULT_WINDOW // timedelta(milliseconds=1)
    rng = random.Random(data.spec.seed + 1)
    times: dict[str, list[float]] = {
        "f1": [], "f2": [], "floor_f1": [], "floor_f2": [], "export_f2": []
    }  # fmt: skip
    floor = _Floor(data.locator)
    with open_hub_store(data.locator, vault=data.vault) as store:
        people: list[str] = []
        for key in rng.sample(data.person_keys, len(data.person_keys)):
            if len(people) == queries:
                break
            if store.checkins_of(key, since_ms, until_ms):
                people.append(key)  # somebody who went out in the period: an index case
        # F1 and F2 each get a time budget: an F2 that names thousands of people takes
        # seconds, and `make bench` must end; at least `brute` people are always traced.
        answers: dict[int, list[Answer]] = {1: [], 2: []}
        for depth in (1, 2):
            engine, floored = times[f"f{depth}"], times[f"floor_f{depth}"]
            started = time.monotonic()
            for n, key in enumerate(people):
                if len(engine) >= brute and time.monotonic() - started > budget_s * depth / 3:
                    break
                params = TraceParams(key, since, until, DEFAULT_WINDOW, depth)
                pseudonym = store.pseudonym(key)
                # Each goes first for every other person: neither always finds the caches
                # as the other left them.
                for which in ("engine", "floor") if n % 2 == 0 else ("floor", "engine"):
                    begun = time.perf_counter()
                    if which == "engine":
                        with store.trace_reader() as reader:
                            finding, named = _first_page(reader, params)
                        engine.append((time.perf_counter() - begun) * 1000)
                    else:
                        in_sql = floor.answer(depth, pseudonym, since_ms, until_ms, window_ms)
                        floored.append((time.perf_counter() - begun) * 1000)
                answers[depth].append(_answer(finding))
                page = TracePage(1).of(finding.reached)
                if [store.pseudonym(c.person_key) for c in named] != [r.pseudonym for r in page]:
                    raise RuntimeError(f"the first page named other people than it found, {key}")
                if n < brute and depth == 2:  # an export: every contact named
                    begun = time.perf_counter()
                    with store.trace_reader() as reader:
                        everyone = trace(reader, params)
                    times["export_f2"].append((time.perf_counter() - begun) * 1000)
                    if len(everyone.contacts) != len(finding.reached):
                        raise RuntimeError(f"the export named other people than it found, {key}")
                if in_sql != answers[depth][-1]:
                    raise RuntimeError(
                        f"the trace engine and the floor SQL disagree for {pseudonym} on"
                        f" {data.locator} at depth {depth}: {len(answers[depth][-1])} vs"
                        f" {len(in_sql)} people"
                    )
        contacts = [(len(answers[1][i]), len(a)) for i, a in enumerate(answers[2])]
        checked = [
            (store.pseudonym(key), [answers[1][i], answers[2][i]])
            for i, key in enumerate(people[:brute])
        ]
    floor.close()
    if not times["f1"]:
        raise RuntimeError(f"nobody in {data.locator} has a check-in in the traced period")
    bf1: list[float] = []
    bf2: list[float] = []
    for pseudonym, engine_answers in checked:
        begun = time.perf_counter()
        rows = _full_scan(data.locator, since_ms, until_ms)
        read = time.perf_counter() - begun
        begun = time.perf_counter()
        depth1 = brute_force(rows, pseudonym, window_ms, 1)
        bf1.append((read + time.perf_counter() - begun) * 1000)
        begun = time.perf_counter()
        both = brute_force(rows, pseudonym, window_ms, 2)
        bf2.append((read + time.perf_counter() - begun) * 1000)
        if depth1[0] != engine_answers[0] or both[1] != engine_answers[1]:
            raise RuntimeError(
                f"the trace engine and the brute force disagree for {pseudonym} on"
                f" {data.locator}: F1 {len(engine_answers[0])} vs {len(depth1[0])} people,"
                f" F2 {len(engine_answers[1])} vs {len(both[1])}"
            )
    return {"f1_ms": times["f1"], "f2_ms": times["f2"], "floor_f1_ms": times["floor_f1"],
            "export_f2_ms": times["export_f2"],
            "floor_f2_ms": times["floor_f2"], "brute_f1_ms": bf1, "brute_f2_ms": bf2,
            "contacts_f1_f2": contacts, "checked_equal": len(checked),
            "floor_equal": len(answers[1]) + len(answers[2])}  # fmt: skip


def _figures(backend: str, m: dict[str, Any], data: TraceData) -> list[Figure]:
    label = f"{backend}, {data.spec.scans:,} scans"
    nb = len(m["brute_f1_ms"])
    mid = [int(percentile([c[i] for c in m["contacts_f1_f2"]], 50)) for i in (0, 1)]
    figures = []
    for what, goal in (("F1 first page", GOAL_F1_MS), ("F2 first page", GOAL_F2_MS)):
        key = what.split()[0].lower()
        engine, floor = m[f"{key}_ms"], m[f"floor_{key}_ms"]
        brute = m[f"brute_{key}_ms"]
        # Each figure names its own sample count: F2 runs under its own time budget and
        # usually completes for fewer index people than F1.
        n = len(engine)
        for q in (50, 95):
            value = percentile(engine, q)
            met = value <= goal if q == 95 else None
            people = mid[0] if key == "f1" else mid[1]
            figures.append(
                Figure(SUBJECT, f"{what} p{q}, n={n}, {label}", value, "ms",
                       percentile(brute, q), f"brute force p{q}, n={nb}",
                       f"≤ {goal:g} ms" if q == 95 else "", met,
                       _why(backend, what, people) if met is False else "",
                       floor=percentile(floor, q), floor_name=f"set-based SQL p{q}, n={n}")
            )  # fmt: skip
    exported = m["export_f2_ms"]
    figures.append(
        Figure(SUBJECT, f"F2 export, every contact named, p50, n={len(exported)}, {label}",
               percentile(exported, 50), "ms",
               note="every contact of the same F2 named, as `hub trace` does in one snapshot;"
               " the dashboard's and API's exports do the same work 1 000 at a time while the"
               " file streams out; context, no goal")
    )  # fmt: skip
    figures.append(
        Figure(SUBJECT, f"people found, median F1 / F2, {label}", float(mid[1]), "people",
               note=f"median F1 {mid[0]}, F2 {mid[1]}; the engine's answer equalled the brute"
               f" force's for all {m['checked_equal']} index people checked, and the floor"
               f" SQL's for all {m['floor_equal']} traces timed")
    )  # fmt: skip
    return figures


def _why(backend: str, what: str, people: int) -> str:
    # What the engine does, not a measured breakdown of where the time goes.
    return (
        f"the {what} answers find {people} people (median) here ({backend}); the engine reads"
        " each degree's windows in one statement from the covering index, counts them all,"
        " and opens the sealed identities of the first 100 (and of their vias), which the"
        " floor SQL does not. Not broken down by this report"
    )


def run(
    quick: bool, tmp: Path, *, scale: float = 1.0, cache: Path = CACHE, queries: int = 200
) -> Result:
    spec = spec_for(quick, scale)
    figures: list[Figure] = []
    raw: dict[str, Any] = {"spec": spec.__dict__}
    notes = []
    for backend in backends():
        begun = time.monotonic()
        data = open_trace_data(spec, backend, cache)
        made = time.monotonic() - begun
        try:
            measured = _measure(
                data, 20 if quick else queries, 2 if quick else 3, 30 if quick else 150
            )
        finally:
            if cache.resolve() != CACHE.resolve():
                discard_postgres_copy(data)  # a temporary cache's copy would outlive it
        raw[backend] = {"generation_s": data.generated_s, "open_s": made, **measured}
        figures += _figures(backend, measured, data)
        notes.append(
            f"{backend}: data set generated in {data.generated_s:.0f} s this run"
            if data.generated_s is not None
            else f"{backend}: data set from the cache ({made:.1f} s to open; {data.cached_note()})"
        )
    text = __doc__.split("\n", 1)[1].strip() + "\n\n" + "; ".join(notes) + "."
    if "postgresql" not in backends():
        text += (
            "\n\nPostgreSQL rows: **not measured in this run**:"
            " `hub/store/postgres.py` is not there yet."
        )
    return Result(figures, raw, text)
