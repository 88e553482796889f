"""Bad messages published with a real client (mosquitto_pub) to a real hub process.

Each kind must land in the dead-letter table with a reason a person can read, and the
hub must go on consuming: a good batch sent after all of them is stored and acked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    MAX_BATCH_SCANS,
    MAX_MESSAGE_BYTES,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
)
from hub.launcher import HubProcess
from tests.fault_net_support import figure_name
from tests.hubstore import open_store, vault_key_file
from tests.reliability import FiguresRecorder
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

DAY = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
PERSON = make_people(1, seed=41)[0]


def _scan(scan_id: str, **changes: object) -> dict[str, object]:
    scan = Scan(scan_id=scan_id, venue_id="hospital", scanned_at=DAY, qr_text=cccd_text(PERSON))
    return {**json.loads(encode_message(scan)), **changes}


def _batch(
    unit: str = "door-1", scans: list[dict[str, object]] | None = None, **changes: object
) -> bytes:
    batch = ScanBatch(
        batch_id="batch-" + str(time.monotonic_ns()),
        unit_id=unit,
        sent_at=DAY,
        scans=[Scan.model_validate(_scan("placeholder-1"))],
    )
    data = {**json.loads(encode_message(batch)), **changes}
    if scans is not None:
        data["scans"] = scans
    return json.dumps(data).encode()


def _pub(
    broker: LocalBroker, topic: str, payload: bytes, tmp_path: Path, *, retain: bool = False
) -> None:
    # -f sends the file's bytes as they are: the only way to put non-UTF-8 on the wire.
    body = tmp_path / "payload.bin"
    body.write_bytes(payload)
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto_pub is missing (apt-get install mosquitto-clients)"
    command = [mosquitto_pub, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic]
    command += ["-f", str(body)] + (["-r"] if retain else [])
    subprocess.run(command, check=True, timeout=30)


@pytest.fixture
def hub(broker: LocalBroker, hub_db: str, tmp_path: Path) -> Iterator[str]:
    """`python -m hub serve` on the registry below; yields its database (`hub_db`)."""
    db = hub_db
    for topic, record in (
        (topic_registry_venue("hospital"), VenueRecord(venue_id="hospital", name="Hospital")),
        (topic_registry_venue("market"), VenueRecord(venue_id="market", name="Market")),
        (topic_registry_unit("door-1"), UnitRecord(unit_id="door-1", venue_id="hospital")),
        (
            topic_registry_unit("door-x"),
            UnitRecord(unit_id="door-x", venue_id="hospital", active=False),
        ),
    ):
        _pub(broker, topic, encode_message(record), tmp_path, retain=True)
    hub = HubProcess(db, broker.host, broker.port, tmp_path / "hub.log", vault_key=vault_key_file())
    yield db
    assert hub.stop() == 0, hub.output()
    assert "Traceback" not in hub.output(), hub.output()


def test_every_kind_of_bad_message_is_dead_lettered_and_the_hub_goes_on(
    broker: LocalBroker, hub: str, tmp_path: Path, reliability_figures: FiguresRecorder
) -> None:
    scans = topic_scans("door-1")
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    bad: list[tuple[str, str, bytes]] = [
        ("not_json", scans, b'{"v": 1, "scans": [ '),
        ("schema", scans, _batch(sent_at=12345)),  # wrong type
        (
            "schema",
            scans,
            _batch(scans=[{k: v for k, v in _scan("s-missing").items() if k != "qr_text"}]),
        ),
        ("schema_version", scans, _batch(v=2)),
        ("not_utf8", scans, b'{"v": 1, "unit_id": "door-1", "x": "\xff\xfe"}'),
        ("too_large", scans, b'{"v": 1, "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'),
        (
            "too_many_scans",
            scans,
            _batch(scans=[_scan(f"s-many-{i:04d}") for i in range(MAX_BATCH_SCANS + 1)]),
        ),
        ("unit_mismatch", scans, _batch(unit="door-2")),
        ("future_time", scans, _batch(scans=[_scan("s-future-1", scanned_at=future)])),
        (
            "implausible_time",
            scans,
            _batch(scans=[_scan("s-epoch-01", scanned_at="1969-12-31T23:59:59Z")]),
        ),
        # Not kept: "not now" (the registry may lag), the unit keeps these and sends again.
        ("", scans, _batch(scans=[_scan("s-venue-01", venue_id="atlantis")])),
        ("venue_mismatch", scans, _batch(scans=[_scan("s-venue-02", venue_id="market")])),
        (
            "revoked_unit",
            topic_scans("door-x"),
            _batch(unit="door-x", scans=[_scan("s-revoked-1")]),
        ),
        ("", topic_scans("door-9"), _batch(unit="door-9", scans=[_scan("s-unknown-1")])),
        (
            "unknown_code",
            scans,
            _batch(scans=[_scan("s-qr-00001", qr_text="'; DROP TABLE scans; --")]),
        ),
        ("schema", scans, _batch(scans=[_scan("s-null-001", qr_text=None)])),
    ]
    started = time.monotonic()
    for _, topic, payload in bad:
        _pub(broker, topic, payload, tmp_path)
    good = _batch(scans=[_scan("s-good-0001")])
    _pub(broker, scans, good, tmp_path)
    # The same batch again (a replay), and its id again with other scans (a forgery).
    forged = json.loads(good)
    forged["scans"] = [_scan("s-forged-01")]
    bad += [
        ("replayed_batch", scans, good),
        ("batch_conflict", scans, json.dumps(forged).encode()),
    ]
    for _, topic, payload in bad[-2:]:
        _pub(broker, topic, payload, tmp_path)

    def stored() -> int:
        with open_store(hub) as store:
            return store.counts()["scans"]

    def letter_count() -> int:
        with open_store(hub) as store:
            return store.counts()["dead_letters"]

    assert wait_for(lambda: stored() == 1), "the good batch after the bad ones was not stored"
    kept = [code for code, _, _ in bad if code]
    assert wait_for(lambda: letter_count() >= len(kept))
    time.sleep(0.5)  # anything more would be a bug: give it the time to show
    with open_store(hub) as store:
        letters = store.dead_letters(limit=100)
        [good_scan] = store.checkins_at("hospital", 0, 2**62)
    assert good_scan.scan_id == "s-good-0001"
    codes = sorted(letter.code for letter in letters)
    assert codes == sorted(kept)
    assert all(letter.reason for letter in letters)
    # Dead letters keep the message as it came, byte for byte (for the ones refused whole).
    non_utf8 = next(letter for letter in letters if letter.code == "not_utf8")
    assert non_utf8.payload == bad[4][2]
    reliability_figures.record(
        figure_name("bad MQTT messages (mosquitto_pub)", hub),
        runs=1,
        bad_inputs_tried=len(bad),
        bad_inputs_refused=len(letters),  # kept as dead letters; the rest were "not now"
        scans_sent=1,
        scans_stored=1,
        lost=0,
        seconds=round(time.monotonic() - started, 1),
    )
