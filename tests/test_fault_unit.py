"""Fault tests of the door unit: SIGKILL at random moments, a full disk, a failing camera.

The promise under test (see device/scanner.py): a visitor never sees green for a scan
that is not on disk, and no fault ends the frame loop. The parts are real (decoder on
segno renders, SQLite journal, gpiozero's MockFactory pins, Mosquitto, the hub
process); the only stand-in is `ScriptedFrames`, the camera that fails on cue.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from device.clock import ManualClock
from device.config import BrokerConfig, FramesConfig, SyncConfig, UnitConfig
from device.frames import FrameSource, FrameSourceError
from device.journal import JournalError, ScanJournal
from device.mqtt_sync import MqttSync
from device.unit import Unit
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people, render_frame
from doorscan.wire import (
    Scan,
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
)
from hub.launcher import HubProcess
from tests.fault_net_support import FAST_DOORS, figure_name
from tests.hubstore import open_store, vault_key_file

DAY = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
PEOPLE = make_people(30, seed=77)
GREEN, RED, BUZZER = 17, 27, 22  # PinsConfig defaults
FAULT_STATES = [False, True, False, True, False, True, False]  # red and buzzer, one FAULT
OFFLINE_GREEN, OFFLINE_BUZZER = [False, True, False], [False, True, False, True, False]

KILLS = 200
# A complete log line of the scanner, written after the feedback was handed over.
FEEDBACK_LINE = re.compile(rb"feedback (\w+) for scan ([0-9a-f]{32})$")


def _figures(request: pytest.FixtureRequest) -> Any:
    """conftest's `reliability_figures` recorder, or None in a tree that lacks it."""
    try:
        return request.getfixturevalue("reliability_figures")
    except pytest.FixtureLookupError:
        return None


def _frame(i: int) -> np.ndarray:
    return render_frame(cccd_text(PEOPLE[i]))


class ScriptedFrames:
    """The fault injector: plays frames, raises exceptions, returns None, runs hooks."""

    def __init__(self, *script: np.ndarray | BaseException | Callable[[], object] | None) -> None:
        self._script = deque(script)
        self.closed = False

    def read(self) -> np.ndarray | None:
        while self._script:
            item = self._script.popleft()
            if isinstance(item, BaseException):
                raise item
            if item is None or isinstance(item, np.ndarray):
                return item
            item()  # a hook: runs between two reads, returns no frame
        return None

    def close(self) -> None:
        self.closed = True


def _unit(
    tmp_path: Path, factory: MockFactory, source: Literal["files", "picamera2"] = "files", **kw: Any
) -> Unit:
    frames = FramesConfig(source="files", path=tmp_path) if source == "files" else FramesConfig()
    config = UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        debounce_s=0,
        repeat_hold_s=0,
        frames=frames,
        broker=BrokerConfig(port=1),  # never started: these units stay offline
    )
    return Unit(config, clock=kw.pop("clock", ManualClock(DAY)), pin_factory=factory, **kw)


def _states(factory: MockFactory, pin: int) -> list[bool]:
    return [bool(s.state) for s in factory.pin(pin).states]


def _rises(factory: MockFactory, pin: int) -> int:
    values = _states(factory, pin)
    return sum(1 for a, b in itertools.pairwise(values) if b and not a)


def _errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= 40]


# -- 1. SIGKILL at random moments ---------------------------------------------------

DOORS = ("door-1", "door-2")


def _green_ids(log: bytes) -> set[str]:
    # The last piece has no newline: a line cut by the kill, or nothing. Either way not counted.
    complete = log.split(b"\n")[:-1]
    return {m[2].decode() for line in complete if (m := FEEDBACK_LINE.search(line.rstrip()))}


def _publish_registry(broker: LocalBroker) -> None:
    """What provisioning would have published: the venue and its doors, retained."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="provision")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        records: list[tuple[str, VenueRecord | UnitRecord]] = [
            (topic_registry_venue("hospital"), VenueRecord(venue_id="hospital", name="Hospital"))
        ]
        for door in DOORS:
            records.append(
                (topic_registry_unit(door), UnitRecord(unit_id=door, venue_id="hospital"))
            )
        for topic, record in records:
            client.publish(topic, encode_message(record), qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _wait_for_first_scan(log_path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while b"feedback " not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the unit never scanned:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.01)


@dataclass
class _Killed:
    """What one door's kill loop saw."""

    journal: Path
    green: set[str] = field(default_factory=set)  # logged as shown, so must be on disk
    kept: set[str] = field(default_factory=set)  # in the journal after the last kill
    startup_kills: int = 0
    runs_with_green: int = 0


def _kill_repeatedly(door: str, tmp_path: Path, broker: LocalBroker, kills: int) -> _Killed:
    folder = tmp_path / door
    (folder / "data").mkdir(parents=True)
    config = folder / "config.json"
    config.write_text(
        json.dumps(
            {
                "unit_id": door,
                "venue_id": "hospital",
                "data_dir": "data",
                "debounce_s": 0,
                "repeat_hold_s": 0,
                "broker": {"host": broker.host, "port": broker.port},
                "frames": {"source": "files", "path": "../frames", "loop": True},
            }
        )
    )
    command = [sys.executable, "-m", "device", "run", "--config", str(config)]
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    seen, log_path = _Killed(folder / "data" / "journal.db"), folder / "unit.log"
    rng = random.Random(door)
    for _ in range(kills):
        with log_path.open("wb") as out:  # a file, not a pipe: a full pipe would stall the unit
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            if rng.random() < 0.15:
                seen.startup_kills += 1  # imports, config, opening the journal, first decode
                time.sleep(rng.uniform(0.0, 0.8))
            else:
                # Waiting for the first scan makes the kill land mid-scanning on any machine.
                _wait_for_first_scan(log_path, proc, timeout_s=60)
                time.sleep(rng.uniform(0.0, 0.25))
            assert proc.poll() is None, log_path.read_text(errors="replace")
        finally:
            proc.kill()
            proc.wait(10)
        run_green = _green_ids(log_path.read_bytes())
        seen.runs_with_green += bool(run_green)
        with ScanJournal(seen.journal) as journal:
            assert journal.integrity_ok()
            kept = {s.scan_id for s in journal.pending(journal.backlog() + 1)}
        assert run_green <= kept, f"{door}: shown green, not in the journal: {run_green - kept}"
        assert seen.kept <= kept, f"{door}: recorded before, gone now: {seen.kept - kept}"
        seen.green |= run_green
        seen.kept = kept
    return seen


@pytest.mark.slow
@pytest.mark.broker
def test_sigkill_at_random_moments_loses_no_green_scan(
    broker: LocalBroker, hub_db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # No hub during the kills: nothing is settled, so the journal's pending list is all
    # the unit ever recorded, and the last step proves the whole backlog still reaches
    # the hub after all the crashes. Killing around acks is the broker/hub tests' fault.
    # Two doors are killed side by side: a unit's start-up is mostly imports, one core each.
    started = time.monotonic()
    (tmp_path / "frames").mkdir()
    for i in range(len(PEOPLE)):
        Image.fromarray(_frame(i)).save(tmp_path / "frames" / f"{i:02d}.png")
    with ThreadPoolExecutor(len(DOORS)) as pool:
        futures = [
            pool.submit(_kill_repeatedly, door, tmp_path, broker, KILLS // len(DOORS))
            for door in DOORS
        ]
        doors = [f.result() for f in futures]
    green = set().union(*(d.green for d in doors))
    kept = set().union(*(d.kept for d in doors))
    # Else the kills mostly hit start-up, and the test would prove little.
    assert sum(d.runs_with_green for d in doors) >= KILLS // 2

    _publish_registry(broker)
    db = hub_db
    hub = HubProcess(
        db,
        broker.host,
        broker.port,
        tmp_path / "hub.log",
        vault_key=vault_key_file(),
        extra_args=FAST_DOORS,
    )
    try:
        with contextlib.ExitStack() as stack:
            journals = [stack.enter_context(ScanJournal(d.journal)) for d in doors]
            for door, journal in zip(DOORS, journals, strict=True):
                sync = MqttSync(
                    door,
                    journal,
                    BrokerConfig(host=broker.host, port=broker.port),
                    SyncConfig(batch_size=500, ack_timeout_s=30),
                )
                stack.enter_context(sync)
            deadline = time.monotonic() + 180
            while any(j.backlog() for j in journals) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [j.backlog() for j in journals] == [0, 0], "scans never acked"
    finally:
        assert hub.stop() == 0, hub.output()
    with open_store(db) as store:
        counts = store.counts()
        stored = {c.scan_id for c in store.checkins_at("hospital", 0, 2**62)}
    assert counts["scans"] == len(kept) and counts["dead_letters"] == 0
    assert stored == kept and green <= stored
    figures = _figures(request)
    if figures is not None:
        figures.record(
            figure_name("unit SIGKILLed while scanning", db),
            runs=KILLS,
            faults_injected=KILLS,
            scans_sent=len(kept),
            scans_stored=counts["scans"],
            lost=len(green - stored),
            green_scans=len(green),
            recorded_not_shown=len(kept - green),
            startup_kills=sum(d.startup_kills for d in doors),
            seconds=round(time.monotonic() - started, 1),
        )


# -- 2. Disk full ------------------------------------------------------------------


@contextlib.contextmanager
def _small_tmpfs(folder: Path) -> Iterator[Path]:
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill_disk(folder: Path) -> Path:
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)  # unbuffered: the error comes here, not at close
    return ballast


@pytest.mark.parametrize("full", ["journal cap", "tmpfs"])
def test_a_full_disk_shows_fault_logs_and_scanning_goes_on(
    full: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    caplog.set_level(logging.INFO)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(_small_tmpfs(tmp_path / "disk")) if full == "tmpfs" else tmp_path
        factory = MockFactory()
        seen: dict[str, dict[int, list[bool]]] = {}

        def snapshot(name: str, then: Callable[[], object] = lambda: None) -> Callable[[], None]:
            def hook() -> None:
                # Wait for the pattern to finish, so each frame's pins are read in isolation.
                unit.indicators.wait_idle(5.0)
                seen[name] = {pin: _states(factory, pin) for pin in (GREEN, RED, BUZZER)}
                for pin in (GREEN, RED, BUZZER):
                    factory.pin(pin).clear_states()
                then()

            return hook

        ballast: list[Path] = []

        def make_room() -> None:
            if ballast:
                ballast.pop().unlink()
            else:
                unit.journal.set_max_bytes(None)

        frames = ScriptedFrames(
            _frame(1), snapshot("a"), _frame(2), snapshot("b", make_room), _frame(3), snapshot("c")
        )
        unit = stack.enter_context(_unit(base, factory, frames=frames))
        if full == "tmpfs":
            ballast.append(_fill_disk(base))
        else:
            unit.journal.set_max_bytes(1)  # the file may not grow past its size now
        fillers = 0
        with pytest.raises(JournalError):  # whatever room is left inside the file goes
            for fillers in range(100_000):
                unit.journal.record(
                    Scan(scan_id=f"filler-{fillers:05d}", venue_id="v", scanned_at=DAY, qr_text="x")
                )
        caplog.clear()

        assert unit.run() == 3  # the loop went on through both faults and ended with the frames
        unit.indicators.wait_idle(5.0)
        recorded = [s.qr_text for s in unit.journal.pending(fillers + 10) if s.venue_id != "v"]
    for name in ("a", "b"):
        assert seen[name] == {GREEN: [False], RED: FAULT_STATES, BUZZER: FAULT_STATES}, name
    assert seen["c"] == {GREEN: OFFLINE_GREEN, RED: [False], BUZZER: OFFLINE_BUZZER}
    errors = _errors(caplog, "device.scanner")
    assert len(errors) == 2 and all("NOT recorded" in e for e in errors), errors
    assert recorded == [cccd_text(PEOPLE[3])]  # only the person after the space came back
    figures = _figures(request)
    if figures is not None:
        # Two visitors while the disk was full (red, nothing recorded), one after (green).
        figures.record(
            f"unit disk full ({full})", runs=1, faults_injected=2, scans_stored=1, lost=0
        )


# -- 3. Camera failure -------------------------------------------------------------


class Camera:
    """A `frames_factory`: each call opens the next scripted source, or raises its error."""

    def __init__(self, *opens: ScriptedFrames | BaseException) -> None:
        self._opens = deque(opens)
        self.opened: list[ScriptedFrames] = []

    def __call__(self) -> FrameSource:
        item = self._opens.popleft()
        if isinstance(item, BaseException):
            raise item
        self.opened.append(item)
        return item


def test_a_failing_camera_shows_fault_once_backs_off_reopens_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    caplog.set_level(logging.INFO)
    factory, clock = MockFactory(), ManualClock(DAY)
    camera = Camera(
        ScriptedFrames(_frame(0), FrameSourceError("the camera gave no frame: timeout")),
        ScriptedFrames(OSError(5, "Input/output error")),
        FrameSourceError("cannot open the camera: busy"),  # the re-open itself fails
        ScriptedFrames(OSError(5, "Input/output error")),
        ScriptedFrames(RuntimeError("Camera frontend has timed out!")),
        ScriptedFrames(_frame(1), OSError(19, "No such device")),  # back, then a 2nd outage
        ScriptedFrames(_frame(2)),
    )
    sleeps: list[float] = []
    outage_seen: list[bool] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        outage_seen.append(not unit.camera_ok)
        unit.indicators.wait_idle(5.0)  # let the FAULT play out before the next frame
        clock.advance(seconds)

    with _unit(
        tmp_path, factory, "picamera2", clock=clock, frames_factory=camera,
        retry_min_s=0.1, retry_max_s=0.5, sleep=sleep,
    ) as unit:  # fmt: skip
        assert unit.run(max_frames=3) == 3
        unit.indicators.wait_idle(5.0)
        recorded = {s.qr_text for s in unit.journal.pending(10)}
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5, 0.1]  # doubling to the cap; reset after recovery
    assert all(outage_seen)
    assert all(source.closed for source in camera.opened)  # every failed one was re-opened
    assert _rises(factory, RED) == 2 * 3  # one FAULT pattern (three red flashes) per outage
    errors = _errors(caplog, "device.unit")
    assert len(errors) == 2 and "timeout" in errors[0] and "No such device" in errors[1]
    back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert len(back) == 2 and "5 failed reads" in back[0]
    assert recorded == {cccd_text(PEOPLE[i]) for i in range(3)}
    figures = _figures(request)
    if figures is not None:
        figures.record(
            "camera fails and comes back", runs=1, faults_injected=6, scans_stored=3, lost=0
        )


def test_a_camera_without_a_frame_yet_is_waited_for_and_a_long_stall_is_a_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    factory, clock = MockFactory(), ManualClock(DAY)
    # 15 frames/s: 5 empty reads are a third of a second; 20 are past the 1 s stall limit.
    source = ScriptedFrames(*[None] * 5, _frame(4), *[None] * 20, _frame(5))
    camera = Camera(source)

    def sleep(seconds: float) -> None:
        unit.indicators.wait_idle(5.0)
        clock.advance(seconds)

    with _unit(
        tmp_path, factory, "picamera2", clock=clock, frames_factory=camera,
        stall_after_s=1.0, sleep=sleep,
    ) as unit:  # fmt: skip
        assert unit.run(max_frames=2) == 2  # None from a camera is not the end of the stream
        recorded = {s.qr_text for s in unit.journal.pending(10)}
    assert camera.opened == [source]  # no frame yet is not a failure: nothing re-opened
    errors = _errors(caplog, "device.unit")
    assert len(errors) == 1 and "no frame from the camera" in errors[0]
    assert _rises(factory, RED) == 3
    assert recorded == {cccd_text(PEOPLE[4]), cccd_text(PEOPLE[5])}


def test_an_unreadable_image_in_a_folder_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(_frame(6)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(_frame(7)).save(folder / "c.png")
    factory = MockFactory()
    with _unit(folder, factory, sleep=lambda s: None) as unit:
        assert unit.run() == 2  # the folder still ends the run (None), after all its images
        recorded = {s.qr_text for s in unit.journal.pending(10)}
    assert recorded == {cccd_text(PEOPLE[6]), cccd_text(PEOPLE[7])}
    assert any("b.png" in e for e in _errors(caplog, "device.unit"))


def test_stop_cuts_a_long_backoff_short(tmp_path: Path) -> None:
    def dead_camera() -> FrameSource:
        raise FrameSourceError("cannot open the camera: not connected")

    with _unit(
        tmp_path, MockFactory(), "picamera2", frames_factory=dead_camera, retry_min_s=600,
        retry_max_s=600,
    ) as unit:  # fmt: skip
        runner = threading.Thread(target=unit.run)
        runner.start()
        while unit.camera_ok:  # the first failure has started the 10-minute wait
            time.sleep(0.01)
        unit.stop()
        runner.join(30)
        assert not runner.is_alive()
