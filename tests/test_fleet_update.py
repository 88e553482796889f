"""A fleet updates itself: real releases, a real hub, real unit processes, real restarts.

The story the field guide's part 10 tells, end to end:

1. Provisioning signs three releases built from this checkout with the documented
   command (``release build --version X``, each with its dependencies' wheels): 1.0.0,
   1.1.0, and 1.2.0 built from a copy whose self-test cannot pass (a bad release).
2. A hub (``python -m hub serve``, as deployed) serves the repository at ``/releases/``
   and takes the units' scans through a real Mosquitto.
3. Two units run as processes started the way systemd starts the service: the boot guard
   (``python3 -I -S boot-guard.py``), then ``current/bin/python -m device run``, started
   again whenever it exits with a failure (``Restart=on-failure``). There is no systemd
   in this sandbox, so `Service` is that loop, reading its two command lines from
   deploy/doorscan-unit.service itself.
4. ``doorscan-hub fleet-update --version 1.1.0 --percent 50``: the unit inside the 50 %
   downloads, installs beside, switches at a quiet moment, restarts, passes its
   self-test, confirms; the other keeps 1.0.0. Then 1.2.0 to that unit: its self-test
   fails, it rolls back to 1.1.0 by itself and says why.
5. Every scan either unit journaled, under any release, is stored by the hub once.

What is learned is read as an outsider reads it: the units' retained statuses from the
broker, the hub's stored check-ins, the folders on the units' disks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from PIL import Image

from device.releases import ReleaseSlots
from device.state import UnitState
from device.updater import ReleaseFetcher
from doorscan.localbroker import LocalBroker, free_port
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from doorscan.wire import (
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
)
from hub.cli import main as hub_main
from hub.cli_unitconfig import rollout_share
from provisioning.cli import main as provisioning
from tests.hubstore import open_store, vault_key_file
from tests.test_hub_config import _publish
from tests.test_status import Watcher
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "deploy" / "doorscan-unit.service"
_SOURCES = ("pyproject.toml", "README.md", "doorscan", "device", "hub", "provisioning", "deploy")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """doorscan's dependencies as wheels for this machine, fetched once (from the index)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    done = subprocess.run(
        [*command, "--dest", str(folder), str(ROOT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def _copy_of_checkout(folder: Path) -> Path:
    for name in _SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def fleet_home(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """A fleet home with 1.0.0, 1.1.0, the bad 1.2.0 and the broken 1.3.0 signed."""
    home = tmp_path_factory.mktemp("fleet")
    offline = ["--platform", "native", "--find-links", str(wheelhouse), "--offline"]
    assert provisioning(["--home", str(home), "release", "init"]) == 0
    for version in ("1.0.0", "1.1.0"):
        build = ["release", "build", "--version", version, *offline]
        assert provisioning(["--home", str(home), *build]) == 0
    # The bad release: built the same way, from sources whose self-test cannot pass.
    bad = _copy_of_checkout(tmp_path_factory.mktemp("bad-source"))
    selftest = bad / "device" / "selftest.py"
    text, count = re.subn(
        r"(?m)^MIN_DISK_FREE_MB = \d+", "MIN_DISK_FREE_MB = 10**9", selftest.read_text()
    )
    assert count == 1
    selftest.write_text(text)
    _build_from(bad, home, "1.2.0", offline)
    # Worse: a release that cannot even start (an import its wheel does not carry).
    broken = _copy_of_checkout(tmp_path_factory.mktemp("broken-source"))
    cli = broken / "device" / "cli.py"
    cli.write_text(
        cli.read_text().replace("import argparse\n", "import argparse\nimport gone\n", 1)
    )
    _build_from(broken, home, "1.3.0", offline)
    return home


def _build_from(source: Path, home: Path, version: str, options: list[str]) -> None:
    """``release build`` run from another copy of the sources (it builds the copy it is in)."""
    command = [sys.executable, "-m", "provisioning", "--home", str(home), "release", "build"]
    done = subprocess.run(
        [*command, "--version", version, *options],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _service_commands(root: Path, data: Path, config: Path) -> tuple[list[str], list[str]]:
    """The boot guard's and the unit's command lines from the service file, on this disk."""
    lines = SERVICE.read_text(encoding="utf-8").splitlines()
    guard = next(line for line in lines if "boot-guard.py" in line).split("=", 1)[1]
    start = next(line for line in lines if line.startswith("ExecStart=")).split("=", 1)[1]
    where = {
        "-/usr/bin/python3": f"{sys.executable} -I -S",
        "/usr/local/lib/doorscan/boot-guard.py": str(ROOT / "device" / "boot_guard.py"),
        "/opt/doorscan": str(root),
        "/var/lib/doorscan": str(data),
        "/etc/doorscan/unit.json": str(config),
    }
    for installed, here in where.items():
        guard, start = guard.replace(installed, here), start.replace(installed, here)
    return shlex.split(guard), shlex.split(start)


class Service:
    """systemd's part for one unit: guard, start, and start again after a failure.

    `guard` and `start` are the two command lines (ExecStartPre and ExecStart); `cwd` is
    WorkingDirectory, not the checkout, whose packages `python -m` would import before
    the release's own. Exit statuses are kept in `exits`, output in `log`.
    """

    def __init__(
        self,
        guard: list[str],
        start: list[str],
        *,
        cwd: Path | None,
        env: dict[str, str],
        log: Path,
    ) -> None:
        self.guard, self.start, self.cwd, self.env, self.log = guard, start, cwd, env, log
        self.exits: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Service:
        self._thread.start()
        return self

    def _run(self) -> None:
        with self.log.open("ab") as log:
            try:
                self._loop(log)
            except Exception as exc:  # said in the log the test shows, not lost in a thread
                log.write(f"service: could not run the unit: {exc!r}\n".encode())
                self.exits.append(-1)

    def _loop(self, log: BinaryIO) -> None:
        while not self._stopping.is_set():
            subprocess.run(
                self.guard, stdout=log, stderr=log, check=False, cwd=self.cwd, env=self.env
            )
            self._process = subprocess.Popen(
                self.start, stdout=log, stderr=log, env=self.env, cwd=self.cwd
            )
            code = self._process.wait()
            self.exits.append(code)
            if code == 0 or self._stopping.is_set():
                return
            self._stopping.wait(0.5)  # RestartSec

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
        self._thread.join(30)


class _Unit(Service):
    """A unit on this machine: its folder holds opt/ (the releases) and data/."""

    def __init__(self, unit_id: str, folder: Path) -> None:
        self.unit_id = unit_id
        self.root, self.data = folder / "opt", folder / "data"
        self.config = folder / "unit.json"
        guard, start = _service_commands(self.root, self.data, self.config)
        env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"}
        super().__init__(guard, start, cwd=self.data, env=env, log=folder / "journal.log")

    def counters(self) -> dict[str, int]:
        with UnitState(self.data / "state.json") as state:
            return state.counters()


def _unit(folder: Path, unit_id: str, broker: LocalBroker, home: Path, http: str) -> _Unit:
    """A unit installed with release 1.0.0, as install-unit.sh leaves one, and its config."""
    folder.mkdir()
    service = _Unit(unit_id, folder)
    service.data.mkdir()
    trusted = home / "releases" / "metadata" / "1.root.json"
    shutil.copy2(trusted, folder / "release-root.json")
    first = ReleaseFetcher(folder / "factory", f"{http}/releases", trusted.read_bytes())
    slots = ReleaseSlots(service.root, python=sys.executable)
    slots.install(first.fetch("1.0.0"))
    slots.switch("1.0.0")
    frames = folder / "frames"
    frames.mkdir()
    for n, person in enumerate(make_people(3, seed=len(unit_id) + ord(unit_id[-1]))):
        Image.fromarray(render_frame(cccd_text(person))).save(frames / f"{n}a.png")
        Image.fromarray(blank_frame()).save(frames / f"{n}b.png")
    config = {
        "unit_id": unit_id,
        "venue_id": "cho",
        "data_dir": "data",
        # Each person once per run: a restarted unit scans them again, as a door would.
        "debounce_s": 3600,
        "broker": {"host": broker.host, "port": broker.port},
        "frames": {"source": "files", "path": "frames", "loop": True, "pace": True, "fps": 5},
        "updates": {
            "repo_url": f"{http}/releases",
            "trusted_root": "release-root.json",
            "root": "opt",
            "python": sys.executable,
            "quiet_s": 2,
            "confirm_within_s": 120,
        },
    }
    service.config.write_text(json.dumps(config))
    return service


def _hub(folder: Path, broker: LocalBroker, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = folder / "hub.toml"
    config.write_text(
        f'[database]\nurl = "hub.db"\nvault_key = "{vault_key_file()}"\n\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\nreleases_dir = "{home / "releases"}"\n'
    )
    log = (folder / "hub.log").open("wb")
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--config", str(config)], stdout=log, stderr=log
    )
    return hub, f"http://127.0.0.1:{port}"


def _two_units_split_by_the_rollout() -> tuple[str, str]:
    """A unit inside a 50 % rollout and one outside it (`rollout_share`)."""
    names = [f"door-{n}" for n in range(40)]
    inside = next(n for n in names if rollout_share(n) < 50)
    outside = next(n for n in names if rollout_share(n) >= 50)
    return inside, outside


@pytest.fixture
def hub_and_units(
    tmp_path: Path, broker: LocalBroker, fleet_home: Path
) -> Iterator[tuple[Path, dict[str, _Unit]]]:
    for topic, message in [
        (topic_registry_venue("cho"), VenueRecord(venue_id="cho", name="Chợ Pleiku")),
        *(
            (topic_registry_unit(u), UnitRecord(unit_id=u, venue_id="cho"))
            for u in _two_units_split_by_the_rollout()
        ),
    ]:
        _publish(broker, topic, encode_message(message), retain=True)
    hub, http = _hub(tmp_path, broker, fleet_home)
    try:
        assert wait_for(lambda: _get(f"{http}/releases/metadata/1.root.json"), 60)
        units = {
            u: _unit(tmp_path / u, u, broker, fleet_home, http)
            for u in _two_units_split_by_the_rollout()
        }
        yield tmp_path, units
    finally:
        hub.terminate()
        hub.wait(30)


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _fleet_update(folder: Path, broker: LocalBroker, *words: str) -> None:
    where = ["--broker-host", broker.host, "--broker-port", str(broker.port)]
    assert hub_main(["fleet-update", *words, "--db", str(folder / "hub.db"), *where]) == 0


def test_half_the_fleet_updates_confirms_and_a_bad_release_rolls_back_by_itself(
    broker: LocalBroker, hub_and_units: tuple[Path, dict[str, _Unit]]
) -> None:
    folder, units = hub_and_units
    inside, outside = _two_units_split_by_the_rollout()
    watchers = {u: Watcher(broker, u) for u in units}

    def latest(unit_id: str) -> dict[str, object]:
        seen = [s for s in watchers[unit_id].statuses() if s.online]
        return seen[-1].model_dump() if seen else {}

    def running(unit_id: str, version: str, state: str | None = None) -> bool:
        status = latest(unit_id)
        return status.get("software") == version and (
            state is None or status.get("update_state") == state
        )

    def sent_everything(unit_id: str) -> bool:
        return latest(unit_id).get("backlog") == 0

    try:
        with units[inside], units[outside]:
            for unit_id in units:
                assert wait_for(partial(running, unit_id, "1.0.0"), 60), latest(unit_id)

            _fleet_update(folder, broker, "--version", "1.1.0", "--percent", "50")
            assert wait_for(lambda: running(inside, "1.1.0", "confirmed"), 180), (
                latest(inside),
                units[inside].log.read_text()[-3000:],
            )
            assert ReleaseSlots(units[inside].root).current() == "1.1.0"
            assert ReleaseSlots(units[inside].root).previous() == "1.0.0"
            assert running(outside, "1.0.0") and latest(outside).get("update_state") is None

            _fleet_update(folder, broker, "--version", "1.2.0", "--units", inside)
            assert wait_for(lambda: running(inside, "1.1.0", "rolled_back"), 180), (
                latest(inside),
                units[inside].log.read_text()[-3000:],
            )
            status = latest(inside)
            assert status["update_version"] == "1.2.0"
            assert str(status["update_error"]).startswith("self-test failed: disk:")
            assert ReleaseSlots(units[inside].root).current() == "1.1.0"
            # Switched to 1.1.0, switched to 1.2.0, rolled back: three restarts (exit 75).
            assert units[inside].exits == [75, 75, 75]

            # 1.3.0 dies at every start: the boot guard, outside every release, rolls back.
            _fleet_update(folder, broker, "--version", "1.3.0", "--units", inside)
            assert wait_for(
                lambda: (
                    latest(inside).get("update_version") == "1.3.0"
                    and running(inside, "1.1.0", "rolled_back")
                ),
                180,
            ), (
                latest(inside),
                units[inside].log.read_text()[-3000:],
            )
            status = latest(inside)
            assert status["software"] == "1.1.0"
            assert status["update_error"] == "boot guard: it failed to confirm itself in 3 starts"
            assert units[inside].exits == [75, 75, 75, 75, 1, 1, 1]
            assert "ModuleNotFoundError: No module named 'gone'" in units[inside].log.read_text()
            assert units[outside].exits == []
            for unit_id in units:  # everything scanned reaches the hub before the end
                assert wait_for(partial(sent_everything, unit_id), 60), latest(unit_id)
    finally:
        for watcher in watchers.values():
            watcher.close()

    with open_store(str(folder / "hub.db")) as store:
        stored = {u: store.unit_traced_scans(u, 0, 2**62) for u in units}
    for unit_id, service in units.items():
        counters = service.counters()
        journaled = counters.get("accepted", 0) + counters.get("recorded_offline", 0)
        # Each run scans the three people once (a quiet moment comes only after them); the
        # updated unit scanned under 1.0.0 and 1.1.0 before its switches (1.2.0 never
        # scanned: its self-test failed first).
        assert journaled >= (6 if unit_id == inside else 3), (unit_id, counters)
        assert len(stored[unit_id]) == journaled, (unit_id, counters)
