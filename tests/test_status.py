"""The unit's retained health status, through a real Mosquitto."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from device.clock import ManualClock, UnitClock
from device.config import BrokerConfig, FramesConfig, UnitConfig
from device.frames import FrameSourceError
from device.unit import Unit, cpu_temp_c, disk_free_mb
from doorscan.localbroker import LocalBroker
from doorscan.wire import UnitStatus, decode_message, topic_status
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

DAY = datetime(2021, 8, 15, 2, tzinfo=UTC)


class Watcher:
    """A subscriber to one unit's status topic, keeping every status it receives."""

    def __init__(self, broker: LocalBroker, unit_id: str) -> None:
        self.seen: list[UnitStatus] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic_status(unit_id), qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append(decode_message(bytes(m.payload), UnitStatus))

    def statuses(self) -> list[UnitStatus]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(broker: LocalBroker) -> Iterator[Watcher]:
    running = Watcher(broker, "door-1")
    yield running
    running.close()


def _config(tmp_path: Path, broker: LocalBroker) -> UnitConfig:
    return UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        broker=BrokerConfig(host=broker.host, port=broker.port),
        frames=FramesConfig(),
    )


class FailingCamera:
    """A camera whose every read fails, as an unplugged ribbon cable does."""

    def read(self) -> np.ndarray | None:
        raise FrameSourceError("the camera gave no frame: timeout")

    def close(self) -> None:
        pass


def test_status_carries_the_health_fields_and_a_camera_outage_is_published_at_once(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher
) -> None:
    clock = UnitClock(ManualClock(DAY), ntp_synced=lambda: False)  # not trusted yet

    def sleep(seconds: float) -> None:
        # The loop waits out its backoff until the outage has been published.
        if wait_for(lambda: any(s.camera_ok is False for s in watcher.statuses()), 20):
            unit.stop()

    with Unit(
        _config(tmp_path, broker), clock=clock, pin_factory=MockFactory(),
        frames_factory=FailingCamera, status_every_s=3600, sleep=sleep,
    ) as unit:  # fmt: skip
        assert wait_for(lambda: len(watcher.statuses()) >= 1)
        first = watcher.statuses()[0]
        assert first.online and first.unit_id == "door-1"
        assert first.camera_ok is True and first.clock_trusted is False
        assert first.uptime_s is not None and first.uptime_s >= 0
        assert first.disk_free_mb is not None and first.disk_free_mb > 0
        assert first.cpu_temp_c == cpu_temp_c()  # None on a machine with no thermal zone
        assert first.backlog == 0
        # No remote config yet: the unit runs on its file, and has refused nothing.
        assert first.config_version is None and first.config_error is None
        unit.run()
        # The change came without waiting for the (hour-long here) periodic status.
        outage = [s for s in watcher.statuses() if s.camera_ok is False]
        assert len(outage) >= 1 and outage[0].online
    # Closing says offline, with no health figures (they would be stale).
    assert wait_for(lambda: not watcher.statuses()[-1].online)
    assert watcher.statuses()[-1].camera_ok is None


def test_status_is_repeated_every_period(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher
) -> None:
    with Unit(
        _config(tmp_path, broker), clock=ManualClock(DAY), pin_factory=MockFactory(),
        status_every_s=0.2,
    ) as unit:  # fmt: skip
        assert wait_for(lambda: len(watcher.statuses()) >= 3)
        assert unit.sync.statuses_sent >= 3
        assert all(s.online and s.clock_trusted for s in watcher.statuses())


def test_cpu_temperature_and_disk_figures(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("52612\n")
    assert cpu_temp_c(zone) == 52.6
    assert cpu_temp_c(tmp_path / "none") is None
    zone.write_text("junk")
    assert cpu_temp_c(zone) is None
    free = disk_free_mb(tmp_path)
    assert free is not None and free > 0
    assert disk_free_mb(tmp_path / "not-there") is None


def test_old_status_messages_still_read() -> None:
    old = b'{"v":1,"schema":"doorscan.unit-status","unit_id":"door-1","online":true}'
    status = decode_message(old, UnitStatus)
    assert status.online and status.camera_ok is None and status.decode_rate_hz is None
