"""`python -m device run` as a real process: image folder in, journal and counters out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from device.journal import ScanJournal
from device.remote_config import STATE_KEY
from device.state import UnitState
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from tests.test_status import Watcher
from tests.waiting import wait_for

pytestmark = pytest.mark.broker


def test_a_unit_process_scans_a_folder_and_keeps_what_it_could_not_send(
    broker: LocalBroker, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    people = make_people(3, seed=23)
    shown = [cccd_text(p) for p in people] + ["WIFI:S:cafe;P:123;;"]
    for i, text in enumerate(shown):
        Image.fromarray(render_frame(text)).save(frames / f"{i:02d}a.png")
        Image.fromarray(blank_frame()).save(frames / f"{i:02d}b.png")
    config = tmp_path / "door-1.json"
    config.write_text(
        json.dumps(
            {
                "unit_id": "door-1",
                "venue_id": "hospital",
                "data_dir": "data",
                "broker": {"host": broker.host, "port": broker.port},
                "frames": {"source": "files", "path": "frames"},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "stopped after 8 frames" in done.stdout
    # No hub is listening, so nothing was acked: every accepted scan is still in the journal.
    with ScanJournal(tmp_path / "data" / "journal.db") as journal:
        assert journal.integrity_ok()
        assert sorted(str(s.qr_text) for s in journal.pending(10)) == sorted(shown[:3])
    with UnitState(tmp_path / "data" / "state.json") as state:
        counters = state.counters()
    assert counters["refused"] == 1
    assert counters["accepted"] + counters["recorded_offline"] == 3


def test_a_config_with_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "door-1.json"
    config.write_text(
        json.dumps({"unit_id": "door-1", "venue_id": "v", "data_dir": "d", "debounce": 5})
    )
    done = subprocess.run(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "debounce: Extra inputs are not permitted" in done.stderr


def test_a_unit_process_takes_remote_config_from_the_hub_command_and_keeps_it(
    broker: LocalBroker, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(blank_frame()).save(frames / "blank.png")
    config = tmp_path / "door-1.json"
    settings = {
        "unit_id": "door-1",
        "venue_id": "hospital",
        "data_dir": "data",
        "broker": {"host": broker.host, "port": broker.port},
        "frames": {"source": "files", "path": "frames", "loop": True, "pace": True, "fps": 5},
    }
    config.write_text(json.dumps(settings))
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    run = [sys.executable, "-m", "device", "run", "--config", str(config)]
    watcher = Watcher(broker, "door-1")
    unit = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: any(s.online for s in watcher.statuses()), 30)
        where = ["--broker-host", broker.host, "--broker-port", str(broker.port)]
        keys = ["debounce_s=5", "quiet_hours=22:00-06:00"]
        hub = subprocess.run(
            [
                sys.executable,
                "-m",
                "hub",
                "unit-config",
                "door-1",
                *keys,
                "--wait-applied",
                "30",
                *where,
                "--db",
                str(tmp_path / "hub.db"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert hub.returncode == 0, hub.stderr
        assert "unit door-1 applied version 1" in hub.stdout
        assert watcher.statuses()[-1].config_version == 1
    finally:
        watcher.close()
        unit.terminate()
        _, stderr = unit.communicate(timeout=30)
    assert unit.returncode == 0, stderr
    assert "remote config version 1 applied" in stderr
    # Rebooted with the broker gone: the settings come from the unit's own state file.
    broker.stop()
    settings["frames"] = {"source": "files", "path": "frames"}
    config.write_text(json.dumps(settings))
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert "remote config version 1 restored from the state file" in again.stderr
    with UnitState(tmp_path / "data" / "state.json") as state:
        kept = state.get(STATE_KEY)
    assert kept["version"] == 1 and kept["debounce_s"] == 5 and kept["quiet_hours"] == "22:00-06:00"
