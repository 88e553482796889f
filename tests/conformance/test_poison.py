"""No message can stop the hub: 25 poison messages, then another unit's batch is acked.

The first build stopped taking scans from the whole fleet after about 20 batches that
made its decoder raise: they were never acknowledged to the broker, whose in-flight
window for the hub filled, and a restart did not help (the persistent session handed
them back). Here the same kinds, and more, come from one unit; a good batch from
another unit must then be acked within seconds, with the hub running and after a restart
with the poison waiting in its session.
"""

from __future__ import annotations

import json
import time

from tests.conformance.conftest import HubUnderTest
from tests.conformance.outsider import Outsider, batch, documented_qr_text, recent, scan, valid
from tests.fault_net_support import figure_name
from tests.hubdb import raw_sql
from tests.reliability import FiguresRecorder

DOOR_1, DOOR_2 = "doorscan/v1/units/door-1", "doorscan/v1/units/door-2"
SECONDS_TO_ANSWER = 10.0


def _poison(tag: str) -> list[tuple[str, bytes]]:
    """25 messages of many kinds on door-1's topics; `tag` keeps ids apart between rounds."""
    text = documented_qr_text()
    good = scan(f"{tag}-scan-ok", "hospital", recent(), text)
    head = json.dumps(batch(f"{tag}-batch-0", "door-1", [good]))
    huge_int = head.replace('"sent_at"', '"x": ' + "9" * 4400 + ', "sent_at"')
    out_of_range = dict(batch(f"{tag}-batch-1", "door-1", [good]), sent_mono_ms=10**15)
    out_of_range["boot_id"] = "0123abcd"
    untrusted = dict(
        good, clock_trusted=False, boot_id="0123abcd", mono_ms=0, scan_id=f"{tag}-mono"
    )
    mono = dict(batch(f"{tag}-batch-2", "door-1", [untrusted]), boot_id="0123abcd")
    mono["sent_mono_ms"] = 2**53 - 1
    many = batch(
        f"{tag}-batch-3", "door-1", [dict(good, scan_id=f"{tag}-m{i:03d}") for i in range(501)]
    )
    nul_status = {"v": 1, "schema": "doorscan.unit-status", "unit_id": "door-1", "online": True}
    nul_status["software"] = "1.0\u0000"
    nul_venue = {"v": 1, "schema": "doorscan.venue", "venue_id": "cafe", "name": "Caf\u0000"}
    scans = f"{DOOR_1}/scans"
    return [
        (scans, huge_int.encode()),
        (scans, json.dumps(out_of_range).encode()),
        (scans, json.dumps(mono).encode()),
        (scans, json.dumps(many).encode()),
        (scans, head.replace('"v": 1', '"v": true', 1).encode()),
        (scans, head.replace('"v": 1', '"v": 1.0', 1).encode()),
        (scans, head.replace('"rev": 6', '"rev": 7', 1).encode()),
        (scans, b'{"v": 1, "x": NaN}'),
        (scans, b"[" * 200_000 + b"]" * 200_000),
        (scans, b"\xff\xfe\x00not utf-8"),
        (scans, b""),
        (scans, b"null"),
        (scans, b'{"v": 1}'),
        (scans, json.dumps(batch(f"{tag}-batch-4", "door-2", [good])).encode()),
        (scans, head.replace(f'"{tag}-scan-ok"', '"short"').encode()),
        (scans, json.dumps(batch(f"{tag}-batch-5", "door-1", [dict(good, colour="red")])).encode()),
        (
            scans,
            json.dumps(
                batch(f"{tag}-batch-6", "door-1", [dict(good, qr_text="x" * 1025)])
            ).encode(),
        ),
        (scans, json.dumps(batch(f"{tag}-batch-7", "door-1", [good, good])).encode()),
        (
            scans,
            json.dumps(batch(f"{tag}-batch-8", "door-1", [dict(good, boot_id="XYZ")])).encode(),
        ),
        (f"{DOOR_1}/status", json.dumps(nul_status).encode()),
        (f"{DOOR_1}/status", b'{"v": 1, "schema": "doorscan.unit-status", "online": "yes"}'),
        ("doorscan/v1/registry/venues/cafe", json.dumps(nul_venue).encode()),
        ("doorscan/v1/registry/units/door-9", b'{"v": 1, "schema": "doorscan.unit"}'),
        (f"{DOOR_1}/ack", b"\x00" * 64),
        ("doorscan/v1/units/DOOR_1/scans", b"{}"),
    ]


def _good_batch_is_acked(door_2: Outsider, tag: str) -> tuple[float, list[str]]:
    """Seconds from publishing door-2's good batch to its ack, and what the ack stored."""
    scan_id = f"{tag}-door-2-ok"
    message = batch(
        f"{tag}-door-2", "door-2", [scan("x" + scan_id, "hospital", recent(), documented_qr_text())]
    )
    assert valid("scan-batch", message)
    started = time.monotonic()
    door_2.publish(f"{DOOR_2}/scans", json.dumps(message).encode())

    def acks() -> list[dict[str, object]]:
        return [a for a in door_2.answers(f"{DOOR_2}/ack") if a["batch_id"] == message["batch_id"]]

    assert door_2.wait(lambda: bool(acks()), SECONDS_TO_ANSWER), "the hub stopped answering"
    seconds = time.monotonic() - started
    [ack] = acks()
    stored = ack["stored"]
    assert valid("ack", ack) and isinstance(stored, list) and stored == ["x" + scan_id]
    return seconds, [str(scan_id) for scan_id in stored]


def test_25_poison_messages_do_not_stop_the_hub_running_or_restarted(
    hub: HubUnderTest, reliability_figures: FiguresRecorder
) -> None:
    door_1 = hub.outsider("door-1")
    door_2 = hub.outsider("door-2")
    door_2.subscribe(f"{DOOR_2}/ack")
    try:
        first, second = _poison("r1"), _poison("r2")
        assert len(first) == len(second) == 25
        for topic, payload in first:
            door_1.publish(topic, payload)
        answers = [_good_batch_is_acked(door_2, "r1")]

        # Again while the hub is down: the poison waits in its session, then comes first.
        def publish_more() -> None:
            for topic, payload in second:
                door_1.publish(topic, payload)

        hub.restart(between=publish_more)
        answers.append(_good_batch_is_acked(door_2, "r2"))
    finally:
        door_1.close()
        door_2.close()

    # Every message was settled: a second restart is handed nothing to redo.
    def letters() -> int:
        return int(raw_sql(hub.db, "SELECT count(*) FROM dead_letters")[0][0])

    before = letters()
    hub.restart()
    time.sleep(1.0)
    assert letters() == before
    assert before >= 2 * 20  # nearly all were kept (an empty payload, a cleared ack: nothing)
    acked = [scan_id for _, stored in answers for scan_id in stored]
    missing = [
        scan_id
        for scan_id in acked
        if not raw_sql(hub.db, "SELECT 1 FROM scans WHERE scan_id = ?", scan_id)
    ]
    reliability_figures.record(
        figure_name("25 poison messages, hub running then restarted (MQTT only)", hub.db),
        runs=len(answers),
        bad_inputs_tried=len(first) + len(second),
        scans_sent=len(answers),
        scans_stored=len(acked) - len(missing),
        lost=len(missing),
        dead_letters_kept=before,
        seconds_to_next_ack_max=round(max(seconds for seconds, _ in answers), 2),
    )
