"""What the real parties send validates against the published schema, topic by topic.

A listener subscribes to everything under doorscan/v1 while provisioning publishes its
registry (the documented commands), a real door unit (`device.unit.Unit`: decoder,
journal, sealing, health figures, remote config) scans and reports, and the hub answers
and takes a remote config from `doorscan-hub unit-config`. Every payload seen is checked
against docs/schema/ by the topic it came on; each kind of message must have been seen.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.clock import ManualClock
from device.config import load_config
from device.unit import Unit
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from doorscan.wire import WIRE_REVISION
from tests.conformance.conftest import HubUnderTest
from tests.conformance.outsider import valid
from tests.waiting import wait_for

SCHEMA_OF_TOPIC = (
    (r"doorscan/v1/units/[^/]+/scans", "scan-batch"),
    (r"doorscan/v1/units/[^/]+/ack", "ack"),
    (r"doorscan/v1/units/[^/]+/status", "unit-status"),
    (r"doorscan/v1/units/[^/]+/config", "unit-config-update"),
    (r"doorscan/v1/hub/status", "hub-status"),
    (r"doorscan/v1/registry/venues/[^/]+", "venue-record"),
    (r"doorscan/v1/registry/units/[^/]+", "unit-record"),
    (r"doorscan/v1/registry/cards/revoked", "card-revocations"),
    (r"doorscan/v1/registry/fleet/keys", "fleet-keys"),
)
PEOPLE = make_people(3, seed=61)


def _command(*words: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *words], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# What the parties send does not depend on the hub's database: SQLite only.
@pytest.mark.parametrize("hub_db", ["sqlite"], indirect=True)
def test_every_message_the_parties_send_matches_its_schema(
    hub: HubUnderTest, tmp_path: Path
) -> None:
    listener = hub.outsider("listener")
    listener.subscribe("doorscan/v1/#")
    where = ["--broker-host", hub.broker.host, "--broker-port", str(hub.broker.port)]
    home = ["provisioning", "--home", str(tmp_path / "fleet")]
    _command(*home, "init", *where, "--plain")
    _command(*home, "add-venue", "--id", "clinic", "--name", "Phòng khám")
    _command(*home, "add-device", "--id", "clinic-door", "--venue", "clinic", "--data-dir", "d")
    card = tmp_path / "card.png"
    issued = _command(*home, "card", "--name", "Lê Thị Hà", "--out", str(card))
    card_id = issued.split()[1]  # "card <id> for <name>, ..."
    _command(*home, "card-revoke", "--id", card_id)
    # The hub gets the fleet's keys first: one that cannot open what the fleet sends stops
    # when the published FleetKeys say so.
    keys = tmp_path / "fleet" / "keys"
    hub.restart(seal_key=keys / "hub-seal.key", card_keys=[keys / "card-signing.pub.pem"])
    _command(*home, "publish")
    config = load_config(tmp_path / "fleet" / "units" / "clinic-door.json")
    config = config.model_copy(
        update={
            "data_dir": tmp_path / "unit",
            "broker": config.broker.model_copy(
                update={"host": hub.broker.host, "port": hub.broker.port}
            ),
        }
    )
    clock = ManualClock(datetime.now(UTC))
    with Unit(config, clock=clock, pin_factory=MockFactory(), status_every_s=3600).start() as unit:
        assert unit.sync.wait_connected(20)
        assert wait_for(lambda: unit.sync.hub_revision is not None)
        for person in PEOPLE:
            unit.scanner.process(render_frame(cccd_text(person)))
            clock.advance(5)
            unit.scanner.process(blank_frame())
        assert wait_for(lambda: unit.journal.backlog() == 0, 20)
        _command(
            "hub", "unit-config", "clinic-door", "debounce_s=60", "--wait-applied", "20",
            "--db", hub.db, *where,
        )  # fmt: skip
    seen: dict[str, int] = {}
    for topic, payload in list(listener.received):
        if not payload:
            continue  # a cleared retained message
        [schema] = [name for pattern, name in SCHEMA_OF_TOPIC if re.fullmatch(pattern, topic)]
        message = json.loads(payload)
        assert valid(schema, message), (topic, message)
        seen[schema] = seen.get(schema, 0) + 1
    listener.close()
    assert set(seen) == {name for _, name in SCHEMA_OF_TOPIC}, seen
    # The unit sealed its scans (the fleet home has a sealing key) and said so in the current
    # revision.
    scans = [json.loads(p) for t, p in listener.received if t.endswith("clinic-door/scans")]
    assert all(s.get("sealed") and "qr_text" not in s for b in scans for s in b["scans"])
    assert scans[-1]["rev"] == WIRE_REVISION
    # The hub said it went away when it was restarted, and that it was back, in that order.
    hub_says = [
        json.loads(p)["online"] for t, p in listener.received if t == "doorscan/v1/hub/status"
    ]
    assert hub_says[-2:] == [False, True]
    # Each batch the unit sent has an id of its own.
    assert len({b["batch_id"] for b in scans}) == len(scans)
