"""The unit's reading of the hub's answers (`device.answers`): pure, no broker."""

from __future__ import annotations

from datetime import UTC, datetime

from device.answers import Deferrals, read_answer
from doorscan.wire import Ack, BatchRefusal, RefusedScan

NOW = datetime(2022, 1, 10, tzinfo=UTC)


def _ack(**fields: object) -> Ack:
    return Ack.model_validate(
        {"batch_id": "batch-0001", "unit_id": "u1", "hub_time": NOW, **fields}
    )


def test_each_scan_is_settled_quarantined_or_kept_for_later() -> None:
    ack = _ack(
        stored=["scan-0001"],
        refused=[
            RefusedScan(scan_id="scan-0002", reason="no key yet", code="no_seal_key", retry=True),
            RefusedScan(scan_id="scan-0003", reason="bad code", code="unknown_code"),
            RefusedScan(scan_id="scan-0004", reason="an older hub says no"),
        ],
    )
    verdicts = read_answer(ack, sent={"scan-0001", "scan-0002", "scan-0003", "scan-0004"})
    assert verdicts.stored == ["scan-0001"]
    assert verdicts.later == ["scan-0002"]
    assert verdicts.final == [
        ("scan-0003", "unknown_code", "bad code"),
        ("scan-0004", "refused", "an older hub says no"),  # no code: final all the same
    ]


def test_a_batch_refused_whole_applies_to_the_scans_it_carried() -> None:
    sent = {"scan-0002", "scan-0001"}
    final = read_answer(_ack(refusal=BatchRefusal(code="schema", reason="x")), sent)
    assert final.final == [("scan-0001", "schema", "x"), ("scan-0002", "schema", "x")]
    wait = BatchRefusal(code="unsupported_revision", reason="y", retry=True)
    assert read_answer(_ack(refusal=wait), sent).later == ["scan-0001", "scan-0002"]
    # A batch no longer in flight (a reconnect cleared it): nothing to name, nothing lost.
    assert read_answer(_ack(refusal=wait), ()).later == []


def test_deferrals_double_up_to_the_cap_and_start_over_after_an_answer_without() -> None:
    deferrals = Deferrals(min_s=30, max_s=100)
    assert deferrals.defer(["a"], now=0) == 30
    assert deferrals.waiting(now=29) == {"a"}
    assert deferrals.waiting(now=30) == frozenset()
    assert deferrals.defer(["b"], now=30) == 60
    assert deferrals.defer(["c"], now=30) == 100  # capped
    assert deferrals.defer([], now=40) is None  # an answer with nothing to defer
    assert deferrals.defer(["d"], now=40) == 30
    assert deferrals.waiting(now=69) == {"b", "c", "d"}
    assert deferrals.waiting(now=70) == {"b", "c"}
