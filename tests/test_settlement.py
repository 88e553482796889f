"""Every message is settled: the ingestor's answers, refusals, conflicts and holds.

These drive `Ingestor.handle` directly on a real store (both backends); the same
promises are checked from outside, over MQTT against `hub serve`, in tests/conformance/.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    MAX_BATCH_SCANS,
    MAX_MESSAGE_BYTES,
    WIRE_REVISION,
    Ack,
    Scan,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    decode_message,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
    topic_status,
)
from doorscan.wire.limits import DEAD_LETTER_PREFIX_BYTES, RATE_MAX_SCANS
from hub import judge as judge_module
from hub.cli import main as hub_main
from hub.ingest import Ingestor, Reply
from hub.store import HubStore
from tests.fault_net_support import figure_name
from tests.hubstore import open_store
from tests.reliability import FiguresRecorder

NOW = datetime(2022, 1, 11, 3, 0, tzinfo=UTC)
DAY = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
PEOPLE = make_people(80, seed=71)
SCANS = topic_scans("door-1")


@dataclass
class Hub:
    store: HubStore
    ingestor: Ingestor
    batches: int = 0
    scans: int = 0
    sent: list[str] = field(default_factory=list)

    def scan(self, at: datetime = DAY, **changes: Any) -> dict[str, Any]:
        self.scans += 1
        person = PEOPLE[self.scans % len(PEOPLE)]
        made = Scan(
            scan_id=f"scan-{self.scans:06d}",
            venue_id="hospital",
            scanned_at=at,
            qr_text=cccd_text(person),
        )
        return {**json.loads(encode_message(made)), **changes}

    def batch(
        self, scans: list[dict[str, Any]], unit: str = "door-1", rev: int | None = 6, **changes: Any
    ) -> bytes:
        self.batches += 1
        data: dict[str, Any] = {
            "v": 1,
            "schema": "doorscan.scan-batch",
            "batch_id": f"batch-{self.batches:06d}",
            "unit_id": unit,
            "sent_at": "2022-01-10T01:00:00.000Z",
            "scans": scans,
        }
        if rev is not None:
            data["rev"] = rev
        return json.dumps({**data, **changes}).encode()

    def send(self, payload: bytes, topic: str = SCANS, **kwargs: Any) -> Ack | None:
        replies = self.ingestor.handle(topic, payload, **kwargs)
        acks = [r for r in replies if r.topic.endswith("/ack")]
        assert len(acks) <= 1
        return decode_message(acks[0].payload, Ack) if acks else None

    def codes(self) -> list[str]:
        return sorted(letter.code for letter in self.store.dead_letters(limit=1000))


@pytest.fixture
def hub(hub_db: str) -> Iterator[Hub]:
    with open_store(hub_db) as store:
        ingestor = Ingestor(store, now=lambda: NOW)
        for topic, record in (
            (topic_registry_venue("hospital"), VenueRecord(venue_id="hospital", name="H")),
            (topic_registry_venue("market"), VenueRecord(venue_id="market", name="M")),
            (topic_registry_unit("door-1"), UnitRecord(unit_id="door-1", venue_id="hospital")),
            (topic_registry_unit("door-2"), UnitRecord(unit_id="door-2", venue_id="hospital")),
        ):
            assert ingestor.handle(topic, encode_message(record)) == []
        yield Hub(store, ingestor)


# -- nothing escapes the decoder -------------------------------------------------------------

POISON = [
    ("not_json", b'{"v": 1, "batch_id": "b-00000001", "x": ' + b"9" * 4400 + b"}"),
    ("not_json", b'{"v": 1, "x": NaN}'),
    ("not_json", b"[" * 100_000 + b"]" * 100_000),
    ("schema_version", b'{"v": true, "batch_id": "b-00000002"}'),
    ("schema_version", b'{"v": 1.0, "batch_id": "b-00000003"}'),
    ("not_object", b"[1, 2]"),
    ("not_utf8", b'{"v": 1, "\xff": 1}'),
]


@pytest.mark.parametrize(("code", "payload"), POISON, ids=[c for c, _ in POISON])
def test_a_payload_that_breaks_the_decoder_is_kept_not_raised(
    hub: Hub, code: str, payload: bytes
) -> None:
    assert hub.send(payload) is None
    assert hub.codes() == [code]


def test_a_monotonic_clock_from_another_age_is_refused_or_ignored_never_raised(hub: Hub) -> None:
    # 10^16 ms is past the wire's integer limit (2^53 - 1): the batch is refused, answered.
    scan = hub.scan(clock_trusted=False, boot_id="0123abcd", mono_ms=1)
    ack = hub.send(hub.batch([scan], boot_id="0123abcd", sent_mono_ms=10**16))
    assert ack is not None and ack.refusal is not None and ack.refusal.code == "schema"
    # 10^15 ms (31 700 years) is within it but dates nothing: the unit's time is judged.
    scan = hub.scan(clock_trusted=False, boot_id="0123abcd", mono_ms=0)
    ack = hub.send(hub.batch([scan], boot_id="0123abcd", sent_mono_ms=10**15))
    assert ack is not None and ack.stored == [scan["scan_id"]]


def test_text_the_database_cannot_hold_is_refused_at_the_door(hub: Hub) -> None:
    venue = json.loads(encode_message(VenueRecord(venue_id="cafe", name="Café")))
    hub.send(json.dumps({**venue, "name": "Caf\u0000"}).encode(), topic_registry_venue("cafe"))
    status = json.loads(encode_message(UnitStatus(unit_id="door-1", online=True)))
    hub.send(json.dumps({**status, "software": "1\u00000"}).encode(), topic_status("door-1"))
    assert hub.codes() == ["schema", "schema"]


def test_an_unexpected_failure_refuses_that_scan_only(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = judge_module.ScanJudge.judge

    def flaky(self: judge_module.ScanJudge, unit_id: str, *args: Any) -> Any:
        if args[2].scan_id == "scan-000002":
            raise ZeroDivisionError("a bug")
        return real(self, unit_id, *args)

    monkeypatch.setattr(judge_module.ScanJudge, "judge", flaky)
    ack = hub.send(hub.batch([hub.scan(), hub.scan(), hub.scan()]))
    assert ack is not None
    assert ack.stored == ["scan-000001", "scan-000003"]
    assert [(r.scan_id, r.code) for r in ack.refused] == [("scan-000002", "internal_error")]
    assert hub.codes() == ["internal_error"]


# -- every identifiable batch gets an answer ---------------------------------------------------


def test_one_bad_scan_is_refused_alone(hub: Hub) -> None:
    good, extra, long_text = hub.scan(), hub.scan(colour="red"), hub.scan(qr_text="x" * 1025)
    bad_boot = hub.scan(boot_id="NOT-HEX!")
    ack = hub.send(hub.batch([good, extra, long_text, bad_boot]))
    assert ack is not None and ack.refusal is None
    assert ack.stored == [good["scan_id"]]
    refused = {r.scan_id: (r.code, r.retry) for r in ack.refused}
    assert refused == {
        extra["scan_id"]: ("schema", None),
        long_text["scan_id"]: ("schema", None),
        bad_boot["scan_id"]: ("schema", None),
    }
    assert hub.codes() == ["schema"] * 3


def test_a_scan_id_twice_in_a_batch_is_refused_once_and_kept_whole(hub: Hub) -> None:
    first = hub.scan()
    other = {**hub.scan(), "scan_id": first["scan_id"]}
    ack = hub.send(hub.batch([first, other, hub.scan()]))
    assert ack is not None and len(ack.stored) == 1
    assert [(r.scan_id, r.code) for r in ack.refused] == [(first["scan_id"], "duplicate_in_batch")]
    [letter] = hub.store.dead_letters()
    assert [s["scan_id"] for s in json.loads(letter.payload)] == [first["scan_id"]] * 2


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"boot_id": "xyz"}, "schema"),
        ({"sent_at": 12}, "schema"),
        ({"colour": "red"}, "schema"),
        ({"unit_id": "door-2"}, "unit_mismatch"),
        ({"rev": WIRE_REVISION + 1}, "unsupported_revision"),
    ],
)
def test_a_bad_batch_head_is_answered_whole(hub: Hub, changes: dict[str, Any], code: str) -> None:
    ack = hub.send(hub.batch([hub.scan()], **changes))
    assert ack is not None and ack.refusal is not None
    assert (ack.refusal.code, ack.stored, ack.refused) == (code, [], [])
    assert ack.refusal.retry is (True if code == "unsupported_revision" else None)
    assert hub.codes() == ([] if code == "unsupported_revision" else [code])


def test_too_many_scans_are_answered_whole(hub: Hub) -> None:
    ack = hub.send(hub.batch([hub.scan() for _ in range(MAX_BATCH_SCANS + 1)]))
    assert ack is not None and ack.refusal is not None and ack.refusal.code == "too_many_scans"


def test_retained_or_qos0_batches_are_refused_and_a_retained_one_cleared(hub: Hub) -> None:
    payload = hub.batch([hub.scan()])
    replies = hub.ingestor.handle(SCANS, payload, retained=True)
    assert Reply(SCANS, b"", retain=True) in replies
    [ack] = [decode_message(r.payload, Ack) for r in replies if r.topic.endswith("/ack")]
    assert ack.refusal is not None and ack.refusal.code == "retained"
    # The hub's own clearing comes back to it, live or retained: nothing to keep.
    assert hub.ingestor.handle(SCANS, b"", retained=True) == []
    assert hub.ingestor.handle(SCANS, b"") == []
    # Retained junk nobody can be answered for is kept, and cleared all the same.
    assert hub.ingestor.handle(SCANS, b"junk", retained=True) == [Reply(SCANS, b"", retain=True)]
    ack2 = hub.send(hub.batch([hub.scan()]), qos=0)
    assert ack2 is not None and ack2.refusal is not None and ack2.refusal.code == "not_qos1"
    assert hub.codes() == ["not_json", "not_qos1", "retained"]
    assert hub.store.counts()["scans"] == 0


def test_an_older_unit_is_answered_in_its_own_revision(hub: Hub) -> None:
    good, unknown_venue, future = (
        hub.scan(),
        hub.scan(venue_id="atlantis"),
        hub.scan(at=NOW + timedelta(hours=1)),
    )
    payload = hub.batch([good, unknown_venue, future], rev=None)
    [reply] = hub.ingestor.handle(SCANS, payload)
    raw = json.loads(reply.payload)
    assert "rev" not in raw and all(set(r) == {"v", "scan_id", "reason"} for r in raw["refused"])
    # The refusal worth a retry is left out: the unit keeps that scan and sends it again.
    assert raw["stored"] == [good["scan_id"]]
    assert [r["scan_id"] for r in raw["refused"]] == [future["scan_id"]]
    # A batch refused whole is refused scan by scan.
    [reply] = hub.ingestor.handle(SCANS, hub.batch([hub.scan(), hub.scan()], rev=None, sent_at=1))
    assert len(json.loads(reply.payload)["refused"]) == 2


def test_an_oversize_message_keeps_its_head_digest_and_length(
    hub: Hub, hub_db: str, reliability_figures: FiguresRecorder
) -> None:
    payload = b'{"v": 1, "pad": "' + b"x" * (50 * MAX_MESSAGE_BYTES) + b'"}'
    assert hub.send(payload) is None
    [letter] = hub.store.dead_letters()
    assert letter.code == "too_large" and letter.payload == payload[:DEAD_LETTER_PREFIX_BYTES]
    assert f"of {len(payload)} bytes, sha256 {hashlib.sha256(payload).hexdigest()}" in letter.reason
    reliability_figures.record(
        figure_name("oversize message (50 MiB) reaching the hub", hub_db),
        runs=1,
        bad_inputs_tried=1,
        bad_inputs_refused=hub.store.counts()["dead_letters"],
        payload_bytes=len(payload),
        bytes_kept=len(letter.payload),
    )


# -- idempotency that cannot lose ----------------------------------------------------------------


def test_a_resent_scan_is_stored_once_and_a_reused_id_is_a_conflict(
    hub: Hub, hub_db: str, reliability_figures: FiguresRecorder
) -> None:
    scan = hub.scan()
    acked: list[str] = []
    for _ in range(2):
        ack = hub.send(hub.batch([scan]))
        assert ack is not None and ack.stored == [scan["scan_id"]]
        acked += ack.stored
    # The same id with another person, from this unit or another: never acked as stored.
    reused = {**hub.scan(), "scan_id": scan["scan_id"]}
    for unit in ("door-1", "door-2"):
        ack = hub.send(hub.batch([reused], unit=unit), topic=topic_scans(unit))
        assert ack is not None and ack.stored == []
        acked += ack.stored
        assert [(r.scan_id, r.code) for r in ack.refused] == [(scan["scan_id"], "scan_id_conflict")]
    # The same bytes from another unit are another scan too.
    ack = hub.send(hub.batch([scan], unit="door-2"), topic=topic_scans("door-2"))
    assert ack is not None and [r.code for r in ack.refused] == ["scan_id_conflict"]
    acked += ack.stored
    assert hub.codes() == ["scan_id_conflict"] * 3
    [kept] = hub.store.checkins_at("hospital", 0, 2**62)
    assert kept.scan_id == scan["scan_id"] and kept.id_number in scan["qr_text"]
    counters = hub.ingestor.counters
    reliability_figures.record(
        figure_name("scan id reused with other content", hub_db),
        runs=1,
        scans_sent=counters.scans_stored
        + counters.scans_duplicate
        + counters.refusals["scan_id_conflict"],
        scans_stored=hub.store.counts()["scans"],
        duplicates_absorbed=counters.scans_duplicate,
        bad_inputs_tried=3,  # the three sends of another scan under the stored id
        bad_inputs_refused=counters.refusals["scan_id_conflict"],
        lost=len(set(acked) - {c.scan_id for c in hub.store.checkins_at("hospital", 0, 2**62)}),
    )


def test_a_batch_id_reused_with_other_scans_is_refused_whole(hub: Hub) -> None:
    payload = hub.batch([hub.scan()])
    hub.send(payload)
    forged = {**json.loads(payload), "scans": [hub.scan()]}
    ack = hub.send(json.dumps(forged).encode())
    assert ack is not None and ack.refusal is not None and ack.refusal.code == "batch_conflict"
    # The same batch again is a redelivery: answered as stored, recorded.
    again = hub.send(payload)
    assert again is not None and again.stored == [json.loads(payload)["scans"][0]["scan_id"]]
    assert hub.codes() == ["batch_conflict", "replayed_batch"]


# -- a unit cannot rewrite history ---------------------------------------------------------------


def test_scans_before_registration_or_the_last_drain_are_held_apart(hub: Hub) -> None:
    registered = UnitRecord(unit_id="door-1", venue_id="hospital", registered_at=DAY)
    hub.send(encode_message(registered), topic_registry_unit("door-1"))
    early = hub.scan(at=DAY - timedelta(hours=1))
    ack = hub.send(hub.batch([early, hub.scan(at=DAY + timedelta(minutes=1))]))
    assert ack is not None and len(ack.stored) == 2  # held is stored: the unit may forget it
    drained = UnitStatus(
        unit_id="door-1", online=True, at=DAY + timedelta(hours=2), backlog=0, clock_trusted=True
    )
    hub.send(encode_message(drained), topic_status("door-1"))
    late = hub.scan(at=DAY + timedelta(hours=1))
    hub.send(hub.batch([late, hub.scan(at=DAY + timedelta(hours=2, minutes=1))]))
    held = {h.scan_id: h.code for h in hub.store.held_scans()}
    assert held == {early["scan_id"]: "before_registration", late["scan_id"]: "before_drain"}
    traced = {c.scan_id for c in hub.store.checkins_at("hospital", 0, 2**62)}
    assert traced.isdisjoint(held) and len(traced) == 2
    # An admin may release a scan found genuine; it then counts like any other.
    assert hub.store.release_held([late["scan_id"]]) == [late["scan_id"]]
    assert late["scan_id"] in {c.scan_id for c in hub.store.checkins_at("hospital", 0, 2**62)}
    assert hub.store.counts()["held"] == 1


def test_a_flood_faster_than_a_door_is_held_apart(hub: Hub) -> None:
    flood = [hub.scan(at=DAY + timedelta(milliseconds=500 * i)) for i in range(RATE_MAX_SCANS + 5)]
    ack = hub.send(hub.batch(flood))
    assert ack is not None and len(ack.stored) == len(flood)
    assert [h.code for h in hub.store.held_scans()] == ["too_fast"] * 5
    # A resent copy of a held scan is a duplicate, not a new scan.
    held_id = hub.store.held_scans()[0].scan_id
    copy = next(s for s in flood if s["scan_id"] == held_id)
    again = hub.send(hub.batch([copy]))
    assert again is not None and again.stored == [held_id]
    assert hub.store.counts()["held"] == 5


def test_an_admin_lists_held_scans_and_releases_one_with_a_reason(
    hub: Hub, hub_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flood = [hub.scan(at=DAY + timedelta(milliseconds=500 * i)) for i in range(RATE_MAX_SCANS + 2)]
    hub.send(hub.batch(flood))
    assert hub_main(["held", "--db", hub_db]) == 0
    listed = capsys.readouterr().out
    assert "2 held scans" in listed and "too_fast" in listed
    assert all(person.name not in listed for person in PEOPLE)  # where and when, never who
    held_id = hub.store.held_scans()[0].scan_id
    assert hub_main(["held", "--db", hub_db, "--release", held_id]) == 2  # no reason
    assert hub_main(["held", "--db", hub_db, "--release", held_id, "--reason", "checked"]) == 0
    assert "released 1 held scans" in capsys.readouterr().out
    assert hub.store.counts()["held"] == 1
    [entry] = [e for e in hub.store.audit_entries() if e.action == "release_held"]
    assert entry.reason == "checked" and entry.params["released"] == [held_id]
