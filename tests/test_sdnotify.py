"""systemd notify and watchdog: a real AF_UNIX datagram socket stands in for systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from PIL import Image

from device.clock import ManualClock
from device.config import BrokerConfig, FramesConfig, UnitConfig
from device.frames import FrameSourceError
from device.sdnotify import SystemdNotifier, watchdog_interval_s
from device.unit import Unit
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people, render_frame


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: collects every datagram's lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.extend(data.decode("utf-8").split("\n"))

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, line: str, count: int = 1, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.seen().count(line) >= count:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    path = f"/tmp/doorscan-notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    receiver = FakeSystemd(path)
    yield receiver
    receiver.close()
    Path(path).unlink(missing_ok=True)


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    # Inherited by a process systemd is not watching: not ours to pet.
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(mine) == 15.0


def test_messages_and_the_pet_rate(systemd: FakeSystemd) -> None:
    now = [100.0]
    notifier = SystemdNotifier(systemd.path, watchdog_every_s=15.0, monotonic=lambda: now[0])
    assert notifier.ready("scanning")
    assert not notifier.watchdog()  # just started: not due yet
    now[0] += 14.9
    assert not notifier.watchdog()
    now[0] += 0.2
    assert notifier.watchdog()
    assert not notifier.watchdog()
    assert notifier.status("camera outage") and notifier.stopping()
    assert systemd.wait_for("STOPPING=1")
    assert systemd.seen() == [
        "READY=1",
        "STATUS=scanning",
        "WATCHDOG=1",
        "STATUS=camera outage",
        "STOPPING=1",
    ]
    notifier.close()
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"doorscan-notify-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(10)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receiver.recv(100) == b"READY=1"
        notifier.close()


def test_a_missing_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"), watchdog_every_s=0.0)
    assert not notifier.ready()
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per frame
    notifier.close()


def test_a_long_backoff_is_cut_into_pets(tmp_path: Path, systemd: FakeSystemd) -> None:
    clock = ManualClock(datetime(2021, 8, 15, 2, tzinfo=UTC))
    notifier = SystemdNotifier(systemd.path, watchdog_every_s=10.0, monotonic=clock.monotonic)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if sum(sleeps) >= 30:
            unit.stop()

    def no_camera() -> Unit:
        raise FrameSourceError("cannot open the camera: busy")

    config = UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        broker=BrokerConfig(port=1),
        frames=FramesConfig(),
    )
    with Unit(
        config, clock=clock, pin_factory=MockFactory(), frames_factory=no_camera,  # type: ignore[arg-type]
        retry_min_s=30.0, retry_max_s=30.0, sleep=sleep, notifier=notifier,
    ) as unit:  # fmt: skip
        notifier.ready()
        unit.run()
    # One 30 s backoff, slept in WatchdogSec/2 slices with a pet after each.
    assert sleeps == [10.0, 10.0, 10.0]
    assert systemd.wait_for("WATCHDOG=1", count=3)
    assert systemd.seen().count("WATCHDOG=1") == 3
    notifier.close()


def _config(tmp_path: Path, broker: LocalBroker, frames: dict[str, object]) -> Path:
    config = tmp_path / "door-1.json"
    config.write_text(
        json.dumps(
            {
                "unit_id": "door-1",
                "venue_id": "hospital",
                "data_dir": "data",
                "broker": {"host": broker.host, "port": broker.port},
                "frames": frames,
            }
        )
    )
    return config


def _start_unit(config: Path, systemd: FakeSystemd) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        "NOTIFY_SOCKET": systemd.path,
        "WATCHDOG_USEC": "100000",  # pet every 50 ms
    }
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.broker
def test_a_running_unit_says_ready_and_keeps_petting_while_frames_flow(
    tmp_path: Path, broker: LocalBroker, systemd: FakeSystemd
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(render_frame(cccd_text(make_people(1, seed=7)[0]))).save(frames / "a.png")
    # Paced at 20 frames/s, so the loop turns for as long as the unit runs.
    config = _config(
        tmp_path, broker, {"source": "files", "path": "frames", "loop": True, "pace": True,
                           "fps": 20}
    )  # fmt: skip
    unit = _start_unit(config, systemd)
    try:
        assert systemd.wait_for("READY=1")
        assert systemd.wait_for("WATCHDOG=1", count=5)
        unit.send_signal(signal.SIGTERM)
        _, err = unit.communicate(timeout=30)
    finally:
        if unit.poll() is None:
            unit.kill()
            unit.communicate()
    assert unit.returncode == 0, err
    assert systemd.wait_for("STOPPING=1")
    seen = systemd.seen()
    assert seen.index("READY=1") < seen.index("WATCHDOG=1") < seen.index("STOPPING=1")


@pytest.mark.broker
def test_a_unit_whose_frame_read_blocks_stops_petting(
    tmp_path: Path, broker: LocalBroker, systemd: FakeSystemd
) -> None:
    # A FIFO as the "image": opening it blocks until a writer comes, just as a wedged
    # camera driver blocks read(). The loop cannot see this; only the watchdog can.
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    unit = _start_unit(_config(tmp_path, broker, {"source": "files", "path": "frame.png"}), systemd)
    try:
        assert systemd.wait_for("READY=1")
        # 40 pet periods of a stalled loop: no pet at all (the control test above gets
        # them at this rate, and the unblocking below shows this unit would pet too).
        time.sleep(2.0)
        assert unit.poll() is None
        assert "WATCHDOG=1" not in systemd.seen()
        png = tmp_path / "real.png"
        Image.fromarray(render_frame(cccd_text(make_people(1, seed=8)[0]))).save(png)
        with fifo.open("wb") as writer:
            writer.write(png.read_bytes())
        assert systemd.wait_for("WATCHDOG=1")
        out, err = unit.communicate(timeout=30)
    finally:
        if unit.poll() is None:
            unit.kill()
            unit.communicate()
    assert unit.returncode == 0, err
    assert "stopped after 1 frames" in out
