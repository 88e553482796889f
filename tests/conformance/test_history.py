"""A unit cannot rewrite history, seen from outside: over MQTT, then `doorscan-hub held`.

A unit registered at a known time (a revision-6 `UnitRecord`, as provisioning writes it)
claims a check-in from before it, and then more check-ins in one minute than a door lets
through. Every scan is answered `stored` (the hub keeps them), and the admin's documented
command lists the ones held apart from traces, with why, and no identity.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

from tests.conformance.conftest import HubUnderTest
from tests.conformance.outsider import batch, documented_qr_text, recent, scan, time_text, valid

UNIT = "doorscan/v1/units/door-2"


def test_claims_a_door_could_not_have_made_are_held_apart_and_listed(hub: HubUnderTest) -> None:
    registered = recent(minutes=30)
    record = {
        "v": 1,
        "rev": 6,
        "schema": "doorscan.unit",
        "unit_id": "door-2",
        "venue_id": "hospital",
        "registered_at": time_text(registered),
    }
    assert valid("unit-record", record)
    door = hub.outsider("door-2")
    door.subscribe(f"{UNIT}/ack")
    try:
        door.publish("doorscan/v1/registry/units/door-2", json.dumps(record).encode(), retain=True)
        text = documented_qr_text()
        early = scan("history-early-1", "hospital", registered - timedelta(hours=2), text)
        start = recent(minutes=10)
        flood = [
            scan(
                f"history-flood-{n:03d}", "hospital", start + timedelta(milliseconds=500 * n), text
            )
            for n in range(62)
        ]
        for number, scans in enumerate(([early], flood)):
            message = batch(f"history-batch-{number}", "door-2", scans)
            assert valid("scan-batch", message)
            door.publish(f"{UNIT}/scans", json.dumps(message).encode())
        assert door.wait(lambda: len(door.answers(f"{UNIT}/ack")) == 2, 10)
        stored = [scan_id for ack in door.answers(f"{UNIT}/ack") for scan_id in ack["stored"]]
        assert len(stored) == 63  # held is kept: the unit may let go of every one
    finally:
        door.close()
    listed = subprocess.run(
        [sys.executable, "-m", "hub", "held", "--db", hub.db],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "3 held scans" in listed
    assert listed.count("too_fast") == 2 and listed.count("before_registration") == 1
    assert "history-early-1" in listed and text.split("|")[2] not in listed  # never who
