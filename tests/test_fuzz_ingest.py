"""Property-based fuzzing of the hub's message validation: nothing escapes, nothing is dropped.

Whatever bytes arrive on whatever topic, `Ingestor.handle` returns (an ack or nothing)
and never raises; every message it does not store whole is in the dead-letter table.
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
        "v": st.sampled_from([1] * 8 + [2, "1", None]),
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


Shared = tuple[HubStore, Iterator[int]]


@pytest.fixture
def shared_store(hub_db: str) -> Iterator[Shared]:
    """One store for all the examples of a test (a fresh one each would be a fresh
    PostgreSQL schema each), and a counter that keeps their ids apart (`_own_ids`)."""
    with open_store(hub_db) as store:
        yield store, itertools.count()


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
    store, examples = shared
    example = next(examples)
    # Registry messages of an earlier example may have changed these: start from them.
    store.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
    store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
    ingestor = Ingestor(store, now=lambda: NOW)
    for topic, original in messages:
        payload = _own_ids(original, example)
        before = store.counts()
        reply = ingestor.handle(topic, payload)
        after = store.counts()
        if reply is not None:
            ack = decode_message(reply.payload, Ack)
            event(f"acked: {len(ack.stored)} stored, {len(ack.refused)} refused")
            batch = json.loads(payload)
            sent = {s["scan_id"] for s in batch["scans"]}
            # Every scan of an acked batch is named once: stored or refused.
            named = [*ack.stored, *(r.scan_id for r in ack.refused)]
            assert sorted(named) == sorted(sent)
            added = after["dead_letters"] - before["dead_letters"]
            if added == len(ack.refused) + 1:  # a copy of a batch already committed
                assert store.dead_letters(limit=1)[0].code == "replayed_batch"
            else:
                assert added == len(ack.refused)
        elif topic.endswith("/scans"):
            event("batch dead-lettered whole")
            # A batch refused whole is kept whole.
            assert after["dead_letters"] == before["dead_letters"] + 1
            assert store.dead_letters(limit=1)[0].payload == payload


def test_a_valid_batch_still_goes_through_the_same_door(hub_db: str) -> None:
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        scan = Scan(
            scan_id="scan-0001", venue_id="hospital", scanned_at=NOW, qr_text=cccd_text(PEOPLE[0])
        )
        batch = ScanBatch(batch_id="batch-0001", unit_id="door-1", sent_at=NOW, scans=[scan])
        reply = Ingestor(store, now=lambda: NOW).handle(
            "doorscan/v1/units/door-1/scans", encode_message(batch)
        )
        assert reply is not None and decode_message(reply.payload, Ack).stored == ["scan-0001"]
        assert store.counts()["scans"] == 1
