"""The trace rule, checked against a brute-force oracle written from the rule's text."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from doorscan.errors import Refusal
from doorscan.payloads import Identity, parse_qr
from doorscan.synthetic import cccd_text, health_text, make_people
from doorscan.timefmt import from_ms, to_ms
from doorscan.wire import VenueRecord
from hub.store import Checkin, CheckinRef, HubStore, StoredScan, TraceReader
from hub.trace import (
    TracePage,
    TraceParams,
    TraceResult,
    find,
    named_batches,
    person_key_from_id,
    trace,
)
from tests.access_data import traced
from tests.hubstore import open_store

TODAY = date(2022, 1, 15)
PEOPLE = make_people(8, seed=3)
WHO = [parse_qr(cccd_text(p), today=TODAY) for p in PEOPLE]
VENUES = ["v0", "v1", "v2"]
T0 = datetime(2021, 8, 15, 3, 0, tzinfo=UTC)
T0_MS = to_ms(T0)
MINUTE = 60_000
NOW = datetime(2021, 9, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    person: int
    venue: int
    at_ms: int


def build_store(locator: str, rows: list[Row], identities: list[Identity] = WHO) -> HubStore:
    return fill(open_store(locator), rows, identities)


def fill(
    store: HubStore, rows: list[Row], identities: list[Identity] = WHO, batch: int = 0
) -> HubStore:
    """Add `rows` to `store`; `batch` keeps the scan ids of one example apart from another's."""
    for venue in VENUES:
        store.upsert_venue(VenueRecord(venue_id=venue, name=venue))
    store.insert_scans(
        [
            StoredScan(
                f"scan-{batch:04d}-{n:06d}",
                None,
                VENUES[r.venue],
                from_ms(r.at_ms),
                True,
                identities[r.person],
                "mqtt",
            )
            for n, r in enumerate(rows)
        ],
        received_at=NOW,
    )
    return store


def oracle(
    rows: list[Row],
    index: int,
    since: int,
    until: int,
    window: int,
    depth: int,
    pseudonym: Callable[[str], str],
) -> tuple[dict[str, tuple[int, int, str, str]], Counter[str]]:
    """person key -> (degree, exposure ms, venue, via person key), straight from the rule.

    Ties go to the via person of the smallest `pseudonym`, then the smallest venue.

    For each degree, look at every ordered pair of check-ins (all of them, no index
    shortcuts) and keep the earliest qualifying event per newly found person. Also
    counts the boundary cases met, which the property test steers towards.
    """
    seen: Counter[str] = Counter()
    live = [r for r in rows if since <= r.at_ms <= until]
    key = [w.person_key for w in WHO]
    degree: dict[str, int] = {key[index]: 0}
    exposure: dict[str, float] = {key[index]: float("-inf")}
    found: dict[str, tuple[int, int, str, str]] = {}
    for k in range(depth):
        layer: dict[str, tuple[int, str, str, str]] = {}
        for a in live:
            for b in live:
                p, q = key[a.person], key[b.person]
                if degree.get(p) != k or q in degree or p == q:
                    continue
                if a.venue != b.venue or abs(a.at_ms - b.at_ms) > window:
                    continue
                event = max(a.at_ms, b.at_ms)
                seen["window edge"] += abs(a.at_ms - b.at_ms) == window
                seen["across exposure"] += a.at_ms < exposure[p] <= event
                if event < exposure[p]:
                    seen["before exposure"] += 1
                    continue
                candidate = (event, pseudonym(p), VENUES[a.venue], p)
                if q not in layer or candidate < layer[q]:
                    layer[q] = candidate
        for q, (event, _, venue, p) in layer.items():
            degree[q] = k + 1
            exposure[q] = event
            found[q] = (k + 1, event, venue, p)
            seen["degree 2+"] += k > 0
    return found, seen


def as_found(result: TraceResult) -> dict[str, tuple[int, int, str, str]]:
    via_key = {w.id_number: w.person_key for w in WHO}
    return {
        c.person_key: (c.degree, to_ms(c.exposed_at), c.venue_id, via_key[c.via])
        for c in result.contacts
    }


def counted(
    result: TraceResult,
) -> tuple[Counter[int], Counter[tuple[int, str]], Counter[tuple[int, datetime]]]:
    """The summary as counters: by degree, by degree and venue, by degree and hour."""
    summary = result.summary
    return (
        Counter(summary.by_degree),
        Counter({(d, v): n for d, v, n in summary.by_venue}),
        Counter({(d, from_ms(h)): n for d, h, n in summary.by_hour}),
    )


def run(
    store: HubStore, index: int, since: int, until: int, window: int, depth: int = 2
) -> TraceResult:
    params = TraceParams(
        person_key=WHO[index].person_key,
        since=from_ms(since),
        until=from_ms(until),
        window=timedelta(milliseconds=window),
        depth=depth,
    )
    return traced_in_snapshot(store, params)


def traced_in_snapshot(store: HubStore, params: TraceParams) -> TraceResult:
    """The engine on one snapshot, as `hub.access` runs it, without the access checks."""
    with store.trace_reader() as reader:
        return trace(reader, params)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Row], int, int, int, int, int]:
    people = draw(st.integers(2, 8))
    venues = draw(st.sampled_from([1, 2, 2, 3]))
    # A coarse minute grid so that |t1 - t2| == window and t == since/until happen often;
    # now and then one millisecond off, to catch an off-by-one on either side.
    jitter = st.sampled_from([0, 0, 0, 0, 0, 1, -1])
    span = draw(st.sampled_from([3, 8, 20]))
    # Each person's day is a walk through a few venues a few minutes apart, so that a
    # person found at one venue has been to others before and after being exposed.
    rows: list[Row] = []
    for person in range(people):
        t = T0_MS + draw(st.integers(0, span)) * MINUTE + draw(jitter)
        for _ in range(draw(st.integers(0, 4))):
            rows.append(Row(person, draw(st.integers(0, venues - 1)), t))
            t += draw(st.integers(0, 3)) * MINUTE + draw(jitter)
    rows = draw(st.permutations(rows))
    # Half the time the period holds every check-in; otherwise it cuts through them.
    if draw(st.booleans()):
        since, until = T0_MS - MINUTE, T0_MS + (span + 13) * MINUTE
    else:
        since = T0_MS + draw(st.integers(-1, span + 6)) * MINUTE
        until = since + draw(st.integers(0, span + 6)) * MINUTE
    window = draw(st.integers(0, max(2, span // 2))) * MINUTE
    depth = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 4]))
    return rows, draw(st.integers(0, people - 1)), since, until, window, depth


@pytest.fixture
def shared_store(hub_db: str) -> Iterator[tuple[HubStore, Iterator[int]]]:
    """One store for all the examples of a property test, and a counter to keep them apart."""
    with open_store(hub_db) as store:
        yield store, itertools.count()


# A scenario spans under an hour; each example gets its own two hours of the store, so
# the period of one never holds another's check-ins.
EXAMPLE_SPACING_MS = 120 * MINUTE


@settings(
    max_examples=400,
    deadline=None,
    # The store is shared on purpose: opened once, examples kept apart by time and id.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
def test_trace_matches_the_brute_force_oracle(
    shared_store: tuple[HubStore, Iterator[int]],
    scenario: tuple[list[Row], int, int, int, int, int],
) -> None:
    store, examples = shared_store
    example = next(examples)
    shift = example * EXAMPLE_SPACING_MS
    rows, index, since, until, window, depth = scenario
    rows = [Row(r.person, r.venue, r.at_ms + shift) for r in rows]
    since, until = since + shift, until + shift
    fill(store, rows, batch=example)
    result = run(store, index, since, until, window, depth)
    expected, seen = oracle(rows, index, since, until, window, depth, store.pseudonym)
    for label in ("window edge", "across exposure", "before exposure", "degree 2+"):
        target(float(seen[label]), label=label)
    assert as_found(result) == expected
    mine = [r for r in rows if r.person == index and since <= r.at_ms <= until]
    # Same-time visits come in scan-id order, which is the order the rows were stored.
    expected_visits = [(r.at_ms, VENUES[r.venue]) for r in sorted(mine, key=lambda r: r.at_ms)]
    assert [(to_ms(v.at), v.venue_id) for v in result.index.visits] == expected_visits
    order = [(c.degree, c.exposed_at, c.venue_id) for c in result.contacts]
    assert order == sorted(order)
    assert result.total == len(result.contacts) and result.page is None
    assert counted(result) == (
        Counter(c.degree for c in result.contacts),
        Counter((c.degree, c.venue_id) for c in result.contacts),
        Counter(
            (c.degree, c.exposed_at.replace(minute=0, second=0, microsecond=0))
            for c in result.contacts
        ),
    )
    # Page by page, the same contacts in the same order; each page names only its own.
    with store.trace_reader() as reader:
        pages = [trace(reader, result.params, TracePage(n, 3)) for n in range(1, 99)]
    assert [c for page in pages for c in page.contacts] == result.contacts
    assert all(p.summary == result.summary and p.total == result.total for p in pages)


def at(minutes: float) -> int:
    return T0_MS + round(minutes * MINUTE)


def test_a_window_that_touches_exactly_counts_one_ms_more_does_not(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(60)), Row(2, 0, at(60) + 1), Row(3, 0, at(-60))]
    with build_store(hub_db, rows) as store:
        result = run(store, 0, at(-120), at(120), 60 * MINUTE, depth=1)
    assert {c.person_key: c.exposed_at for c in result.contacts} == {
        WHO[1].person_key: from_ms(at(60)),
        WHO[3].person_key: from_ms(at(0)),  # the event's time is the later check-in
    }


def test_since_and_until_are_inclusive(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(30))]
    with build_store(hub_db, rows) as store:
        assert len(run(store, 0, at(0), at(30), 60 * MINUTE).contacts) == 1
        assert run(store, 0, at(0), at(30) - 1, 60 * MINUTE).contacts == []
        late = run(store, 0, at(0) + 1, at(30), 60 * MINUTE)
        assert late.contacts == [] and late.index.visits == []


def test_a_meeting_before_the_f1_was_exposed_makes_no_f2(hub_db: str) -> None:
    rows = [
        Row(0, 0, at(120)),  # index at v0, 12:00 (T0 + 2h)
        Row(1, 0, at(150)),  # F1, exposed at +150
        Row(1, 1, at(0)),  # the F1 earlier at v1 ...
        Row(2, 1, at(10)),  # ... met person 2 at +10: before exposure, no F2
        Row(1, 1, at(120)),  # the F1 at v1 at +120 (before exposure) ...
        Row(3, 1, at(140)),  # ... person 3 at +140: event +140 < +150, no F2
        Row(4, 1, at(160)),  # ... person 4 at +160: event +160 >= +150, F2
        Row(1, 2, at(200)),  # the F1 at v2 at +200, after exposure ...
        Row(5, 2, at(145)),  # ... person 5 came earlier; the event is at +200: F2
        Row(1, 2, at(100)),  # the F1 at v2 at +100, before exposure ...
        Row(6, 2, at(150)),  # ... person 6 exactly at the exposure time: F2 at +150
    ]
    with build_store(hub_db, rows) as store:
        result = run(store, 0, at(-300), at(300), 60 * MINUTE)
    assert as_found(result) == {
        WHO[1].person_key: (1, at(150), "v0", WHO[0].person_key),
        WHO[4].person_key: (2, at(160), "v1", WHO[1].person_key),
        WHO[5].person_key: (2, at(200), "v2", WHO[1].person_key),
        WHO[6].person_key: (2, at(150), "v2", WHO[1].person_key),
    }


def test_nobody_is_their_own_contact(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(0, 0, at(5)), Row(1, 1, at(0)), Row(1, 0, at(500))]
    with build_store(hub_db, rows) as store:
        assert run(store, 0, at(-10), at(600), 60 * MINUTE).contacts == []


def test_an_f1_meeting_itself_or_the_index_again_is_no_f2(hub_db: str) -> None:
    # The F1 checked in twice at a venue where nobody else was: no F2 from itself,
    # and the index it meets again is not an F2 either.
    rows = [Row(0, 0, at(0)), Row(1, 0, at(0)), Row(1, 1, at(60)), Row(1, 1, at(61))]
    rows += [Row(1, 2, at(100)), Row(0, 2, at(100))]
    with build_store(hub_db, rows) as store:
        result = run(store, 0, at(-10), at(600), 60 * MINUTE, depth=4)
    assert as_found(result) == {WHO[1].person_key: (1, at(0), "v0", WHO[0].person_key)}


def test_ties_are_broken_by_via_pseudonym_then_venue(hub_db: str) -> None:
    rows = [
        Row(0, 1, at(0)),
        Row(0, 0, at(0)),  # the index at v0 and v1 at the same time ...
        Row(1, 0, at(30)),
        Row(1, 1, at(30)),  # ... person 1 at both, 30 min later: venue v0 wins the tie
        Row(2, 0, at(30)),
        Row(3, 2, at(90)),  # persons 1 and 2 both at v2 with person 3 at +90
        Row(1, 2, at(90)),
        Row(2, 2, at(90)),
    ]
    with build_store(hub_db, rows) as store:
        result = run(store, 0, at(-10), at(600), 60 * MINUTE)
        via = min(WHO[1].person_key, WHO[2].person_key, key=store.pseudonym)
    found = as_found(result)
    assert found[WHO[1].person_key] == (1, at(30), "v0", WHO[0].person_key)
    assert found[WHO[3].person_key] == (2, at(90), "v2", via)


def test_the_earliest_event_over_all_f1s_wins(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(0)), Row(2, 0, at(0))]
    rows += [Row(1, 1, at(100)), Row(2, 1, at(70)), Row(3, 1, at(70))]  # via 2 at +70
    with build_store(hub_db, rows) as store:
        result = run(store, 0, at(-10), at(600), 60 * MINUTE)
    assert as_found(result)[WHO[3].person_key] == (2, at(70), "v1", WHO[2].person_key)


def test_depth_limits_the_degrees(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(0)), Row(1, 1, at(60)), Row(2, 1, at(60))]
    rows += [Row(2, 2, at(120)), Row(3, 2, at(120))]
    with build_store(hub_db, rows) as store:
        degrees = {
            d: [c.degree for c in run(store, 0, 0, at(999), 0, d).contacts] for d in range(4)
        }
    assert degrees == {0: [], 1: [1], 2: [1, 2], 3: [1, 2, 3]}


def test_the_trace_reads_only_the_windows_it_needs(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(20))]
    rows += [Row(2 + n % 6, 0, at(24 * 60 + n)) for n in range(600)]  # the next day, same venue

    class Counting:
        """The store's snapshot reader, counting the check-ins read and opened."""

        def __init__(self, reader: TraceReader) -> None:
            self.reader, self.rows, self.opened = reader, 0, 0

        def visits_of(
            self, pseudonyms: Collection[str], since_ms: int, until_ms: int
        ) -> list[CheckinRef]:
            found = self.reader.visits_of(pseudonyms, since_ms, until_ms)
            self.rows += len(found)
            return found

        def checkins_in_windows(
            self, windows: Mapping[str, Sequence[tuple[int, int]]]
        ) -> list[CheckinRef]:
            found = self.reader.checkins_in_windows(windows)
            self.rows += len(found)
            return found

        def open_checkins(self, refs: Collection[CheckinRef]) -> dict[str, Checkin]:
            self.opened += len(refs)
            return self.reader.open_checkins(refs)

        def person(self, person_key: str) -> tuple[str, str] | None:
            return self.reader.person(person_key)

        def pseudonym(self, person_key: str) -> str:
            return self.reader.pseudonym(person_key)

    with build_store(hub_db, rows) as store, store.trace_reader() as snapshot:
        reader = Counting(snapshot)
        params = TraceParams(WHO[0].person_key, from_ms(at(-60)), from_ms(at(48 * 60)))
        result = trace(reader, params)
    assert [c.person_key for c in result.contacts] == [WHO[1].person_key]
    assert reader.rows < 10
    assert reader.opened == 1  # only the one contact's identity was decrypted


def test_an_unknown_person_gives_an_empty_trace(hub_db: str) -> None:
    with build_store(hub_db, [Row(1, 0, at(0))]) as store:
        params = TraceParams("id:079201000001", from_ms(at(-10)), from_ms(at(10)))
        result = traced_in_snapshot(store, params)
    assert result.index.name is None and result.index.id_number == "079201000001"
    assert result.contacts == [] and result.index.visits == []


def test_a_masked_health_qr_person_is_traced_by_qid(hub_db: str) -> None:
    masked = parse_qr(health_text(PEOPLE[1], masked=True))
    identities = [WHO[0], masked]
    with build_store(hub_db, [Row(0, 0, at(0)), Row(1, 0, at(5))], identities) as store:
        since, until = from_ms(at(-10)), from_ms(at(10))
        result = traced(store, masked.person_key, since, until, timedelta(0), 1, "x", NOW)
        assert result.index.visits and result.contacts == []
        five = timedelta(minutes=5)
        result = traced(store, masked.person_key, since, until, five, 1, "ca F0", NOW)
    assert [c.id_number for c in result.contacts] == [WHO[0].id_number]
    assert result.index.id_number.startswith("******")


def test_a_trace_is_audited_and_refused_without_reason(hub_db: str) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(10))]
    since, until = from_ms(at(-60)), from_ms(at(60))
    with build_store(hub_db, rows) as store:
        for reason in ("", "   \n"):
            with pytest.raises(Refusal) as refused:
                traced(store, WHO[0].id_number, since, until, timedelta(hours=1), 2, reason, NOW)
            assert refused.value.code == "no_reason"
        with pytest.raises(Refusal):
            traced(store, WHO[0].id_number, until, since, timedelta(hours=1), 2, "r", NOW)
        with pytest.raises(Refusal):
            traced(store, WHO[0].id_number, since, until, timedelta(hours=1), 9, "r", NOW)
        assert store.audit_entries() == []
        result = traced(
            store, f" {WHO[0].id_number} ", since, until, timedelta(hours=1), 2, "ca F0 số 7", NOW
        )
        (entry,) = store.audit_entries()
    assert (entry.action, entry.reason, entry.at) == ("trace", "ca F0 số 7", NOW)
    # The audit names the subject by pseudonym only: no ID number, no person key; and
    # who asked, and how many contacts the answer held.
    assert entry.params.pop("principal")["role"] == "tracer"
    assert entry.params.pop("results") == len(result.contacts) == 1
    assert entry.params == {
        "subject": store.pseudonym(WHO[0].person_key),
        "since": "2021-08-15T02:00:00.000Z",
        "until": "2021-08-15T04:00:00.000Z",
        "window_minutes": 60,
        "depth": 2,
    }
    data = result.to_json_dict()
    assert set(data) == {"index", "summary", "total", "page", "contacts", "params"}
    assert (data["total"], data["page"]) == (1, None)
    assert data["summary"] == {
        "by_degree": {"1": 1},
        "by_venue": [{"degree": 1, "venue_id": "v0", "people": 1}],
        "by_hour": [{"degree": 1, "hour": "2021-08-15T03:00:00.000Z", "people": 1}],
    }
    assert data["contacts"] == [
        {
            "id_number": WHO[1].id_number,
            "name": WHO[1].name,
            "degree": 1,
            "exposed_at": "2021-08-15T03:10:00.000Z",
            "venue_id": "v0",
            "via": WHO[0].id_number,
        }
    ]
    assert data["index"]["visits"] == [{"venue_id": "v0", "at": "2021-08-15T03:00:00.000Z"}]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("064090123456", "id:064090123456"),
        (" 123456789 ", "id:123456789"),
        ("C1234567", "id:C1234567"),
        ("c1234567", "id:C1234567"),
        ("7K3M9P2QXA", "card:7K3M9P2QXA"),
        ("7k3m9p2qxa", "card:7K3M9P2QXA"),
        ("id:B12345678A", "id:B12345678A"),
        ("qid:a1b2c3", "qid:a1b2c3"),
        ("card:7K3M9P2QXA", "card:7K3M9P2QXA"),
    ],
)
def test_person_key_from_what_a_tracer_types(text: str, key: str) -> None:
    assert person_key_from_id(text) == key


@pytest.mark.parametrize("text", ["", "id:", "******123456", "Nguyễn Văn An", "12", "a;b"])
def test_person_key_refuses_what_names_nobody(text: str) -> None:
    with pytest.raises(Refusal):
        person_key_from_id(text)


def test_an_export_leaves_out_a_contact_purged_between_the_walk_and_its_naming(
    hub_db: str,
) -> None:
    rows = [Row(0, 0, at(0)), Row(1, 0, at(10)), Row(2, 0, at(20))]
    with build_store(hub_db, rows) as store:
        params = TraceParams(WHO[0].person_key, from_ms(at(-60)), from_ms(at(60)))
        with store.trace_reader() as reader:
            finding = find(reader, params)
        assert len(finding.reached) == 2
        batches = named_batches(store.trace_reader, finding, size=1)
        first = next(batches)
        store.purge_older_than(NOW + timedelta(days=1))  # retention runs mid-export
        assert [len(first), *map(len, batches)] == [1, 0]
