"""The technician's self-test: mock pins, a real Mosquitto, real QR codes in image files."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin
from PIL import Image

from device.cli import main
from device.clock import ManualClock, UnitClock
from device.config import BrokerConfig, FramesConfig, PinsConfig, UnitConfig
from device.selftest import Check, button_held, format_table, run_selftest
from doorscan.localbroker import LocalBroker, free_port
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame

pytestmark = pytest.mark.broker

PERSON = make_people(1, seed=31)[0]
TRUSTED = UnitClock(ManualClock(datetime(2021, 8, 15, tzinfo=UTC)), ntp_synced=lambda: True)
UNTRUSTED = UnitClock(ManualClock(datetime(2021, 8, 15, tzinfo=UTC)), ntp_synced=lambda: False)


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(render_frame(cccd_text(PERSON))).save(folder / "1.png")
    Image.fromarray(blank_frame()).save(folder / "2.png")
    Image.fromarray(render_frame("WIFI:S:cafe;P:123;;")).save(folder / "3.png")
    return folder


def _config(tmp_path: Path, frames: Path, port: int, host: str = "127.0.0.1") -> UnitConfig:
    return UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        broker=BrokerConfig(host=host, port=port),
        frames=FramesConfig(source="files", path=frames),
        pins=PinsConfig(button=5),
    )


def _rises(factory: MockFactory, pin: int) -> int:
    """How often a mock pin went from off to on (its recorded history)."""
    states = [bool(change.state) for change in factory.pin(pin).states]
    return sum(1 for before, after in itertools.pairwise(states) if after and not before)


def test_everything_passes_and_outputs_light_one_at_a_time(
    tmp_path: Path, frames: Path, broker: LocalBroker
) -> None:
    factory = MockFactory()
    said: list[str] = []
    on_when_said: list[list[int]] = []  # which outputs were on as each line was said

    def say(line: str) -> None:
        said.append(line)
        on_when_said.append([pin for pin in (17, 27, 22) if factory.pin(pin).state])

    checks = run_selftest(
        _config(tmp_path, frames, broker.port, broker.host),
        seconds=30, pin_factory=factory, clock=TRUSTED, step_s=0.01, say=say,
    )  # fmt: skip
    table = format_table(checks)
    assert [c.name for c in checks] == [
        "green LED", "red LED", "buzzer", "camera", "broker", "clock", "disk",
    ]  # fmt: skip
    assert all(c.ok for c in checks), table
    assert table.endswith("self-test: PASS")
    # Each output went on once and was off again before the next was announced.
    assert [_rises(factory, pin) for pin in (17, 27, 22)] == [1, 1, 1]
    assert said[:3] == [
        "leds: green LED (GPIO 17) on now: is it lit?",
        "leds: red LED (GPIO 27) on now: is it lit?",
        "buzzer (GPIO 22): one beep now",
    ]
    assert all(on == [] for on in on_when_said)
    assert not any(factory.pin(pin).state for pin in (17, 27, 22))
    codes = [line for line in said if line.startswith("camera: code")]
    assert codes == ["camera: code 1: cccd, accepted", "camera: code 2: refused (unknown_code)"]
    # The identity never shows: not the name, not the number.
    output = "\n".join(said) + table
    assert PERSON.name not in output and PERSON.id_number not in output
    assert "3 frames, 2 codes read" in table


def test_each_fault_fails_its_own_line_and_the_others_still_run(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    checks = run_selftest(
        _config(tmp_path, empty, free_port()),  # nothing listens there
        seconds=1, pin_factory=MockFactory(), clock=UNTRUSTED, step_s=0.01, say=lambda _: None,
        broker_timeout_s=5,
    )  # fmt: skip
    verdicts = {c.name: c.ok for c in checks}
    assert verdicts == {
        "green LED": True, "red LED": True, "buzzer": True,
        "camera": False, "broker": False, "clock": False, "disk": True,
    }  # fmt: skip
    details = {c.name: c.detail for c in checks}
    assert details["camera"] == "no frame arrived"
    assert "timedatectl" in details["clock"]
    assert format_table(checks).endswith("self-test: FAIL (3 failed)")


def test_format_table_lines_up() -> None:
    table = format_table([Check("clock", True, "synchronised"), Check("broker", False, "down")])
    assert table.splitlines() == [
        "clock   PASS  synchronised",
        "broker  FAIL  down",
        "self-test: FAIL (1 failed)",
    ]


class HeldDownPin(MockPin):  # type: ignore[misc]
    """A pin whose button is already held at boot: the pull-up cannot raise a line that
    the button ties to ground (a plain MockPin goes high when the pull-up is set)."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self.drive_low()


def test_button_held_released_or_up() -> None:
    assert not button_held(5, hold_s=0.1, pin_factory=MockFactory())  # up: at once
    factory = MockFactory()
    pin = factory.pin(5, pin_class=HeldDownPin)
    assert button_held(5, hold_s=0.1, pin_factory=factory)
    # Let go during the hold: a brush, not a request.
    timer = threading.Timer(0.05, pin.drive_high)
    timer.start()
    assert not button_held(5, hold_s=30, pin_factory=factory)
    timer.join()


def _config_file(tmp_path: Path, frames: Path, port: int, **pins: int) -> Path:
    path = tmp_path / "unit.json"
    path.write_text(
        json.dumps(
            {
                "unit_id": "door-1",
                "venue_id": "hospital",
                "data_dir": "data",
                "broker": {"host": "127.0.0.1", "port": port},
                "frames": {"source": "files", "path": str(frames)},
                "pins": pins,
            }
        )
    )
    return path


@pytest.mark.parametrize("broker_up", [True, False])
def test_selftest_command_prints_the_table_and_exits_by_it(
    tmp_path: Path, frames: Path, broker: LocalBroker, broker_up: bool
) -> None:
    if not broker_up:
        broker.kill()
    done = subprocess.run(
        [sys.executable, "-m", "device", "selftest", "--config",
         str(_config_file(tmp_path, frames, broker.port)), "--seconds", "5"],
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    table = done.stdout[done.stdout.index("green LED  ") :]
    assert ("broker     PASS" in table) == broker_up, table
    assert "camera     PASS  3 frames, 2 codes read" in table
    # Whether this machine's clock counts as synchronised decides the clock line only.
    failed = table.count(" FAIL ")
    assert done.returncode == (1 if failed else 0), done.stderr
    assert failed >= (0 if broker_up else 1)
    assert "Traceback" not in done.stderr


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    saved = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield factory
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    Device.pin_factory = saved


def test_holding_the_button_at_boot_runs_the_selftest_before_the_unit(
    tmp_path: Path,
    frames: Path,
    broker: LocalBroker,
    mock_pins: MockFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config_file(tmp_path, frames, broker.port, button=5)
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "button held at boot" not in out and "self-test:" not in out  # control: not held
    mock_pins.pins.clear()  # the button is held down from here on
    mock_pins.pin(5, pin_class=HeldDownPin)
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.index("button held at boot") < out.index("self-test:") < out.index("running")
    assert "stopped after 3 frames" in out
