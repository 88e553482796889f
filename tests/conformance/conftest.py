"""A real Mosquitto and a real `hub serve` (SQLite and PostgreSQL), seen only over MQTT.

The registry is published as an outsider would: JSON written from docs/wire.md, checked
against docs/schema/ before it is sent. The hub is the documented command, as a child
process; tests look at its database only to check what it acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from doorscan.localbroker import LocalBroker
from hub.launcher import HubProcess
from tests.conformance.outsider import Outsider, valid
from tests.hubstore import vault_key_file

REGISTRY = {
    "doorscan/v1/registry/venues/hospital": {
        "v": 1, "schema": "doorscan.venue", "venue_id": "hospital", "name": "Bệnh viện",
    },
    "doorscan/v1/registry/venues/market": {
        "v": 1, "schema": "doorscan.venue", "venue_id": "market", "name": "Chợ",
    },
    "doorscan/v1/registry/units/door-1": {
        "v": 1, "schema": "doorscan.unit", "unit_id": "door-1", "venue_id": "hospital",
    },
    "doorscan/v1/registry/units/door-2": {
        "v": 1, "schema": "doorscan.unit", "unit_id": "door-2", "venue_id": "hospital",
    },
    "doorscan/v1/registry/units/door-x": {
        "v": 1, "schema": "doorscan.unit", "unit_id": "door-x", "venue_id": "market",
        "active": False,
    },
}  # fmt: skip


@dataclass
class HubUnderTest:
    broker: LocalBroker
    db: str
    log: Path
    process: HubProcess

    def restart(
        self,
        between: object = None,
        seal_key: Path | None = None,
        card_keys: Sequence[Path] = (),
    ) -> None:
        """SIGTERM the hub; call `between()` while it is down; start it again (with the
        fleet's private sealing key and card keys, if given)."""
        assert self.process.stop() == 0, self.process.output()
        if callable(between):
            between()
        self.process = _start(self.broker, self.db, self.log, seal_key, card_keys)

    def outsider(self, client_id: str) -> Outsider:
        return Outsider(self.broker.host, self.broker.port, client_id)


def _start(
    broker: LocalBroker,
    db: str,
    log: Path,
    seal_key: Path | None = None,
    card_keys: Sequence[Path] = (),
) -> HubProcess:
    return HubProcess(
        db,
        broker.host,
        broker.port,
        log,
        vault_key=vault_key_file(),
        seal_key=seal_key,
        card_keys=card_keys,
    )


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    """Mosquitto as a fleet's broker runs it: 20 unacknowledged messages in flight to a
    client at most (Mosquitto's default; the suite's other brokers allow 100), so a hub
    that leaves messages unsettled stops here as it would in the field. No size limit:
    what the hub does with an oversize message is under test too."""
    with LocalBroker(extra_config="max_inflight_messages 20\n") as running:
        yield running


@pytest.fixture
def hub(broker: LocalBroker, hub_db: str, tmp_path: Path) -> Iterator[HubUnderTest]:
    provisioning = Outsider(broker.host, broker.port, "provisioning")
    try:
        for topic, record in REGISTRY.items():
            schema = "venue-record" if "/venues/" in topic else "unit-record"
            assert valid(schema, record), (topic, record)
            provisioning.publish(topic, json.dumps(record).encode(), retain=True)
    finally:
        provisioning.close()
    running = HubUnderTest(
        broker, hub_db, tmp_path / "hub.log", _start(broker, hub_db, tmp_path / "hub.log")
    )
    yield running
    output = running.process.output()
    assert running.process.stop() == 0, output
    assert "Traceback" not in output, output
