"""Metrics move when real messages are handled; /metrics is valid Prometheus text.

The exposition is read back with prometheus_client's own parser, so a malformed line
fails here rather than in someone's Prometheus. The last test runs a real unit process
against a real Mosquitto and the hub's real MQTT service: its retained status lands
in ``unit_status``, and SIGKILL makes the broker publish its last will "offline".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame
from doorscan.wire import UnitRecord, VenueRecord
from hub.access import AccessControlledStore, Role
from hub.auth import create_user, issue_api_token
from hub.ingest import Ingestor
from hub.service import HubService
from hub.web.app import create_app
from hub.web.metrics import HubMetrics
from tests.access_data import principal
from tests.hubstore import open_store
from tests.test_reports import NOW, Clock, Hub
from tests.waiting import wait_for


def samples(text: str) -> dict[str, float]:
    """Every sample of the exposition by name (labels joined in), parsed by prometheus_client."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


@pytest.fixture
def hub(hub_db: str) -> Iterator[tuple[Hub, HubMetrics]]:
    clock = Clock(NOW)
    metrics = HubMetrics()
    with open_store(hub_db) as store:
        hub = Hub(store, clock, Ingestor(store, now=clock, metrics=metrics))
        hub.register()
        yield hub, metrics


def test_counters_move_with_real_messages(hub: tuple[Hub, HubMetrics]) -> None:
    node, metrics = hub
    before = samples(metrics.render(node.store).decode())
    assert before["doorscan_scans_ingested_total"] == 0
    assert before["doorscan_units_online"] == 0
    node.scan("cho-pleiku", NOW - timedelta(seconds=90))  # a live scan: 90 s of lag
    node.scan("benh-vien", NOW - timedelta(hours=30), trusted=False)  # no lag: hub-dated
    node.ingestor.handle("doorscan/v1/units/door-cho-pleiku/scans", b"not json")
    node.status("door-cho-pleiku", True)
    node.status("door-benh-vien", False)
    after = samples(metrics.render(node.store).decode())
    assert after["doorscan_scans_ingested_total"] == 2
    assert after["doorscan_acks_sent_total"] == 2
    assert after["doorscan_dead_letters_total"] == 1
    assert after["doorscan_units_online"] == 1
    assert after["doorscan_ingest_lag_seconds_count"] == 1
    assert after["doorscan_ingest_lag_seconds_sum"] == 90
    assert after["doorscan_ingest_lag_seconds_bucket{le=60.0}"] == 0
    assert after["doorscan_ingest_lag_seconds_bucket{le=300.0}"] == 1


def test_a_resent_batch_is_acked_but_not_counted_again(hub: tuple[Hub, HubMetrics]) -> None:
    node, metrics = hub
    node.scan("cho-pleiku", NOW - timedelta(minutes=1))
    assert node.store.counts()["scans"] == 1
    # The same scan again under a new batch id: stored once, acked twice.
    node._n -= 1
    node.scan("cho-pleiku", NOW - timedelta(minutes=1))
    parsed = samples(metrics.render().decode())
    assert parsed["doorscan_scans_ingested_total"] == 1
    assert parsed["doorscan_acks_sent_total"] == 2


def test_trace_latency_is_observed_and_two_hubs_do_not_share_counters() -> None:
    first, second = HubMetrics(), HubMetrics()
    first.observe_trace(0.2)
    first.observe_trace(3.0)
    one, other = samples(first.render().decode()), samples(second.render().decode())
    assert one["doorscan_trace_seconds_count"] == 2
    assert one["doorscan_trace_seconds_bucket{le=0.25}"] == 1
    assert other["doorscan_trace_seconds_count"] == 0


def test_the_metrics_endpoint_serves_the_app_metrics(
    hub: tuple[Hub, HubMetrics], tmp_path: Path
) -> None:
    node, metrics = hub
    create_user(node.store, "ops", "Ops", Role.ADMIN, None, "a long enough password", NOW)
    token = issue_api_token(node.store, "ops", 30, NOW).token
    node.scan("cho-pleiku", NOW - timedelta(seconds=5))
    node.status("door-cho-pleiku", True)
    with TestClient(create_app(node.store, now=node.clock, metrics=metrics)) as client:
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    parsed = samples(answer.text)
    assert parsed["doorscan_scans_ingested_total"] == 1
    assert parsed["doorscan_units_online"] == 1
    assert "doorscan_trace_seconds_count" in parsed


# -- a real unit, a real broker, the hub's MQTT service -----------------------------------


@pytest.mark.broker
def test_a_unit_status_and_its_last_will_reach_the_units_table(
    broker: LocalBroker, hub_db: str, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(blank_frame()).save(frames / "blank.png")
    config = tmp_path / "door-1.json"
    config.write_text(
        json.dumps(
            {
                "unit_id": "door-1",
                "venue_id": "hospital",
                "data_dir": "data",
                "broker": {"host": broker.host, "port": broker.port},
                # A camera that never stops: the unit runs until it is killed.
                "frames": {"source": "files", "path": "frames", "loop": True, "pace": True},
            }
        )
    )
    metrics = HubMetrics()
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="Bệnh viện"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        ingestor = Ingestor(store, metrics=metrics)
        with HubService(ingestor, broker.host, broker.port, client_id="hub-status-test") as hub:
            assert hub.wait_connected(20)
            log = (tmp_path / "unit.log").open("wb")
            unit = subprocess.Popen(
                [sys.executable, "-m", "device", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                cwd=tmp_path,
            )
            try:
                online = wait_for(lambda: [s.online for s in store.unit_statuses()] == [True], 60)
                assert online, (tmp_path / "unit.log").read_text(errors="replace")
                assert store.units_online() == 1
                status = json.loads(store.unit_statuses()[0].status_json)
                assert status["unit_id"] == "door-1" and status["software"]
            finally:
                unit.send_signal(signal.SIGKILL)
                unit.wait(30)
                log.close()
            # No goodbye was said: only the broker's last will can say "offline".
            assert wait_for(lambda: [s.online for s in store.unit_statuses()] == [False], 60)
        assert samples(metrics.render(store).decode())["doorscan_units_online"] == 0
        assert store.dead_letters() == []
        (health,) = AccessControlledStore(store, principal(Role.ADMIN)).units(datetime.now(UTC))
        assert (health.unit_id, health.online, health.registered) == ("door-1", False, True)
