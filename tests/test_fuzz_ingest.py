"""Property-based fuzzing of the hub's message validation: nothing escapes, nothing is dropped.

Whatever bytes arrive on whatever topic, `Ingestor.handle` returns (an ack or nothing)
and never raises; every message it does not store whole is in the dead-letter table;
every batch whose id can be read is answered, in the revision it was sent in; nothing
acked as stored is missing from the store. The same invariants are checked from
outside, over MQTT against a `hub serve` process, in tests/conformance/.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
)
from hub.ingest import Ingestor
from hub.store import HubStore
from tests.hubdb import raw_sql
from tests.hubstore import open_store

NOW = datetime(2022, 1, 11, tzinfo=UTC)
PEOPLE = make_people(5, seed=47)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
good_scan = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "scan_id": st.from_regex(r"[a-z0-9]{8,16}", fullmatch=True),
        "venue_id": st.sampled_from(["hospital", "market", "nowhere"]),
        "scanned_at": st.sampled_from(
            ["2022-01-10T01:00:00Z", "2031-01-01T00:00:00Z", "1969-12-31T00:00:00Z"]
        ),
        "clock_trusted": st.booleans(),
        "qr_text": st.sampled_from([cccd_text(p) for p in PEOPLE] + ["junk", "|" * 7]),
    }
)
# Batches that are nearly right, with random damage: the interesting edge of the validator.
near_batches = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1] * 8 + [2, "1", None, True, 1.0]),
        "schema": st.sampled_from(["doorscan.scan-batch"] * 8 + ["doorscan.ack"]),
        "batch_id": st.from_regex(r"[a-z0-9]{8,12}", fullmatch=True),
        "unit_id": st.sampled_from(["door-1"] * 6 + ["door-2", "DOOR 1"]),
        "sent_at": st.sampled_from(["2022-01-10T01:00:00Z"] * 6 + ["yesterday", 5]),
        "scans": st.lists(
            st.one_of(good_scan, good_scan, st.dictionaries(st.text(max_size=8), json_values)),
            min_size=1,
            max_size=4,
        ),
    },
    # A unit of revision 6 reads codes and whole-batch refusals; an older one does not.
    optional={"rev": st.sampled_from([6, 6, 7, 0, "6"])},
).map(lambda d: json.dumps(d).encode())
payloads = (
    st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | near_batches
)
topics = st.sampled_from(
    [
        "doorscan/v1/units/door-1/scans",
        "doorscan/v1/units/door-1/scans",
        "doorscan/v1/units/door-1/scans",
        "doorscan/v1/units/door-2/scans",
        "doorscan/v1/registry/venues/hospital",
        "doorscan/v1/registry/units/door-1",
        "doorscan/v1/units/door-1/status",
        "elsewhere/x",
    ]
)


Shared = tuple[HubStore, Iterator[int], str]


@pytest.fixture
def shared_store(hub_db: str) -> Iterator[Shared]:
    """One store for all the examples of a test (a fresh one each would be a fresh
    PostgreSQL schema each), a counter that keeps their ids apart (`_own_ids`), and the
    database's locator (to look behind the store's back)."""
    with open_store(hub_db) as store:
        yield store, itertools.count(), hub_db


# The store is shared by the examples on purpose; `_check` keeps them independent.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(messages=st.lists(st.tuples(topics, payloads), min_size=1, max_size=5))
def test_ingest_never_raises_and_keeps_what_it_refuses(
    shared_store: Shared, messages: list[tuple[str, bytes]]
) -> None:
    _check(shared_store, messages)


@FUZZ
@given(batches=st.lists(near_batches, min_size=1, max_size=5))
def test_nearly_right_batches_are_split_exactly_into_stored_and_refused(
    shared_store: Shared, batches: list[bytes]
) -> None:
    _check(shared_store, [("doorscan/v1/units/door-1/scans", batch) for batch in batches])


_VALID_ID = re.compile(r"[A-Za-z0-9_-]{8,56}")


def _own_ids(payload: bytes, example: int) -> bytes:
    """`payload` with its valid batch and scan ids made unique to this example.

    Scan ids are unique forever, so an id stored by an earlier example would make a
    later one a duplicate. Ids that are not valid stay as they are (a prefix could
    make them valid), as does anything that is not a UTF-8 JSON object.
    """
    try:
        message = json.loads(payload.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one
        return payload
    if not isinstance(message, dict):
        return payload

    def own(value: Any) -> Any:
        if isinstance(value, str) and _VALID_ID.fullmatch(value):
            return f"e{example:05d}-{value}"
        return value

    if "batch_id" in message:
        message["batch_id"] = own(message["batch_id"])
    if isinstance(message.get("scans"), list):
        for scan in message["scans"]:
            if isinstance(scan, dict) and "scan_id" in scan:
                scan["scan_id"] = own(scan["scan_id"])
    return json.dumps(message).encode()


def _check(shared: Shared, messages: list[tuple[str, bytes]]) -> None:
    store, examples, locator = shared
    example = next(examples)
    # Registry messages of an earlier example may have changed these: start from them.
    store.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
    store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
    ingestor = Ingestor(store, now=lambda: NOW)
    for topic, original in messages:
        payload = _own_ids(original, example)
        before = store.counts()
        deferred_before = ingestor.counters.scans_deferred
        replies = ingestor.handle(topic, payload)
        after = store.counts()
        added = after["dead_letters"] - before["dead_letters"]
        acks = [decode_message(r.payload, Ack) for r in replies if r.topic.endswith("/ack")]
        if acks:
            [ack] = acks
            batch = json.loads(payload)
            scans = batch.get("scans") if isinstance(batch.get("scans"), list) else []
            # The ids a reader can name: the hub answers for these only.
            sent = [
                s["scan_id"]
                for s in scans
                if isinstance(s, dict)
                and isinstance(s.get("scan_id"), str)
                and re.fullmatch(r"[A-Za-z0-9_-]{8,64}", s["scan_id"])
            ]
            named = [*ack.stored, *(r.scan_id for r in ack.refused)]
            if ack.refusal is not None:
                event(f"refused whole: {ack.refusal.code}")
                assert named == [] and batch.get("rev") is not None  # revision 6 or newer
                assert added == (0 if ack.refusal.retry else 1)
                continue
            event(f"acked: {len(ack.stored)} stored, {len(ack.refused)} refused")
            # Each scan is named once, stored or refused; an older unit is not told of a
            # refusal worth a retry (it keeps the scan and sends it again).
            assert len(named) == len(set(named)) and set(named) <= set(sent)
            left_out = set(sent) - set(named)
            deferred = ingestor.counters.scans_deferred - deferred_before
            if batch.get("rev") == 6:
                assert not left_out
            else:
                assert len(left_out) <= deferred
            kept = [r for r in ack.refused if not r.retry]
            # An older unit hears of a batch refused whole as each scan refused alike,
            # while the hub keeps the batch as one dead letter.
            whole = bool(kept) and not ack.stored and len({r.reason for r in kept}) == 1
            replayed = added > 0 and store.dead_letters(limit=1)[0].code == "replayed_batch"
            if replayed:
                # A copy of a batch already committed: the copy is recorded, and its
                # refusals, kept when it first came, are not kept twice; a scan whose id
                # it reuses with other content is a conflict, kept now.
                conflicts = [r for r in kept if "stored before with other content" in r.reason]
                assert added == 1 + len(conflicts)
            else:
                assert added == len(kept) or (whole and added == 1)
            # Nothing acked as stored is missing from the store.
            for scan_id in ack.stored:
                rows = raw_sql(
                    locator,
                    "SELECT scan_id FROM scans WHERE scan_id = ? "
                    "UNION ALL SELECT scan_id FROM held_scans WHERE scan_id = ?",
                    scan_id,
                    scan_id,
                )
                assert len(rows) == 1, scan_id
        elif topic.endswith("/scans"):
            event("batch unanswered")
            # A batch nobody can be answered for is kept whole, unless it was a refusal
            # worth a retry to a unit of an older revision (which will send it again), or
            # empty (nothing to keep).
            assert added in (0, 1)
            if added == 1:
                assert store.dead_letters(limit=1)[0].payload == payload
            elif payload:
                assert json.loads(payload).get("rev") is None


def test_a_valid_batch_still_goes_through_the_same_door(hub_db: str) -> None:
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        scan = Scan(
            scan_id="scan-0001", venue_id="hospital", scanned_at=NOW, qr_text=cccd_text(PEOPLE[0])
        )
        batch = ScanBatch(batch_id="batch-0001", unit_id="door-1", sent_at=NOW, scans=[scan])
        [reply] = Ingestor(store, now=lambda: NOW).handle(
            "doorscan/v1/units/door-1/scans", encode_message(batch)
        )
        assert decode_message(reply.payload, Ack).stored == ["scan-0001"]
        assert store.counts()["scans"] == 1
