"""The unit's update agent and boot guard: each step of an update, and each way back.

Real parts: releases published by ``provisioning release build`` and served over HTTP,
fetched with TUF's checks, installed as real venvs by real pip; the boot guard run as
systemd runs it, a file of the system's Python in isolated mode (``python -I -S``: no
site-packages, not even doorscan's). The agent's worker thread is run in line
(`start_thread`) so that each step can be looked at; the end-to-end run of real unit
processes is tests/test_fleet_update.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
import time as wall_time
from collections.abc import Iterator
from datetime import UTC, datetime, time
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device.boot_guard import MAX_STARTS, UpdateRecord, read_record, write_record
from device.config import UpdatesConfig
from device.releases import ReleaseSlots
from device.update_agent import UpdateAgent, running_release
from device.updater import ReleaseFetcher
from doorscan.wire import QUIET_HOURS_TZ
from provisioning.cli import main as provisioning
from tests.test_release import _Quiet
from tests.test_release_slots import _greeting, _wheel

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "device" / "boot_guard.py"
NOON = datetime(2026, 12, 5, 5, tzinfo=UTC)  # 12:00 in Vietnam


class _Repo:
    """A fleet home publishing door-extra releases, served over HTTP while it lives."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "fleet"
        assert provisioning(["--home", str(self.home), "release", "init"]) == 0
        handler = partial(_Quiet, directory=str(self.home / "releases"))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, version: str) -> None:
        wheel = str(_wheel(self.folder, version))
        build = ["release", "build", "--version", version, "--wheel", wheel]
        assert provisioning(["--home", str(self.home), *build]) == 0

    @property
    def trusted_root(self) -> Path:
        return self.home / "releases" / "metadata" / "1.root.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Repo]:
    repo = _Repo(tmp_path_factory.mktemp("repo"))
    for version in ("1.0.0", "1.1.0"):
        repo.publish(version)
    yield repo
    repo.close()


class _Unit:
    """One unit's update side: its slots running 1.0.0, its record, and agents on it."""

    def __init__(self, folder: Path, repo: _Repo, url: str | None = None) -> None:
        self.root = folder / "opt"
        self.data = folder / "data"
        self.data.mkdir()
        self.settings = UpdatesConfig(
            repo_url=url or repo.url,
            trusted_root=repo.trusted_root,
            root=self.root,
            python=sys.executable,
            state_dir=self.data / "updates",
            quiet_s=60,
            confirm_within_s=600,
        )
        self.wall = NOON.timestamp()
        self.slots = ReleaseSlots(self.root, python=sys.executable)
        first = ReleaseFetcher(folder / "factory", repo.url, repo.trusted_root.read_bytes())
        self.slots.install(first.fetch("1.0.0"))
        self.slots.switch("1.0.0")

    def agent(self, running: str | None = None) -> UpdateAgent:
        """The agent of a process running `running` (default: what ``current`` is)."""
        slots = ReleaseSlots(self.root, python=sys.executable)
        fetcher = ReleaseFetcher(
            self.settings.state_dir or self.data,
            self.settings.repo_url,
            self.settings.trusted_root.read_bytes(),
        )
        return UpdateAgent(
            self.settings,
            self.data / "update.json",
            slots=slots,
            fetcher=fetcher,
            running=running or slots.current(),
            wall=lambda: self.wall,
            start_thread=lambda work: work(),
        )

    @property
    def record(self) -> UpdateRecord | None:
        return read_record(self.data / "update.json")

    def greeting(self) -> str:
        return _greeting(self.slots)


def _tick(agent: UpdateAgent, *, idle_s: float = 120.0, **options: Any) -> bool:
    return agent.tick(options.pop("now", NOON), last_scan_age_s=idle_s, **options)


def test_a_release_is_fetched_while_busy_switched_when_quiet_and_confirmed(
    tmp_path: Path, repo: _Repo
) -> None:
    unit = _Unit(tmp_path, repo)
    agent = unit.agent()
    agent.want("1.1.0", config_version=4)
    assert not _tick(agent, idle_s=5.0), "installed beside, but not switched while busy"
    assert unit.record == UpdateRecord("1.1.0", "staged", config_version=4)
    assert agent.status_fields() == {
        "update_version": "1.1.0",
        "update_state": "staged",
        "update_error": None,
    }
    assert unit.greeting() == "xin chào 1.0.0"
    assert not _tick(agent, idle_s=59.0)
    assert _tick(agent, idle_s=61.0), "quiet for a minute: switch and restart"
    assert agent.restart_wanted
    switched = unit.record
    assert switched is not None and switched.state == "switched"
    assert (switched.previous, switched.starts, switched.deadline) == (
        "1.0.0",
        0,
        unit.wall + 600,
    )
    assert (unit.slots.current(), unit.slots.previous()) == ("1.1.0", "1.0.0")
    assert unit.greeting() == "xin chào 1.1.0"

    # The restarted process runs 1.1.0: it confirms once the broker has acked its status.
    after = unit.agent()
    assert after.awaiting_confirmation()
    assert not _tick(after, status_acked=False)
    assert not _tick(after, status_acked=True)
    confirmed = unit.record
    assert confirmed is not None and confirmed.state == "confirmed"
    assert not after.awaiting_confirmation()
    after.want("1.1.0", config_version=4)  # what it runs: nothing to do
    assert not _tick(after) and unit.record == confirmed


def test_no_acknowledgement_before_the_deadline_rolls_back_and_is_not_tried_again(
    tmp_path: Path, repo: _Repo
) -> None:
    unit = _Unit(tmp_path, repo)
    _switched(unit)
    new = unit.agent()
    unit.wall += 599
    assert not _tick(new, status_acked=False)
    unit.wall += 2
    assert _tick(new, status_acked=False), "past the deadline: roll back and restart"
    record = unit.record
    assert record is not None and record.state == "rolled_back"
    assert record.error is not None and "no acknowledgement" in record.error
    assert (unit.slots.current(), unit.slots.previous()) == ("1.0.0", "1.1.0")
    assert unit.greeting() == "xin chào 1.0.0"

    old = unit.agent()  # 1.0.0 again, and the hub still asks for 1.1.0 in config 4
    old.want("1.1.0", config_version=4)
    for _ in range(3):
        assert not _tick(old)
    assert unit.record == record, "a release that rolled back is not taken again"
    assert old.status_fields()["update_state"] == "rolled_back"
    old.want("1.1.0", config_version=5)  # the hub asks anew
    _tick(old)
    retried = unit.record
    assert retried is not None and (retried.state, retried.config_version) == ("staged", 5)


def test_a_tampered_release_fails_and_the_unit_keeps_running_its_own(
    tmp_path: Path, repo: _Repo
) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(repo.home / "releases", mirror)
    (wheel,) = (mirror / "targets" / "releases" / "1.1.0").glob("*.door_extra-*.whl")
    wheel.write_bytes(wheel.read_bytes().replace(b"1.1.0", b"6.6.6"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        unit = _Unit(tmp_path, repo, url=f"http://127.0.0.1:{server.server_address[1]}")
        agent = unit.agent()
        agent.want("1.1.0", config_version=4)
        assert not _tick(agent)
    finally:
        server.shutdown()
        server.server_close()
    record = unit.record
    assert record is not None and record.state == "failed"
    assert record.error is not None and "repository_refused" in record.error
    assert "1.1.0" not in unit.slots.installed()
    assert unit.slots.current() == "1.0.0" and unit.greeting() == "xin chào 1.0.0"
    assert not _tick(agent) and unit.record == record, "not fetched again for the same ask"


def test_a_repository_out_of_reach_is_tried_again_later(tmp_path: Path, repo: _Repo) -> None:
    unit = _Unit(tmp_path, repo, url="http://127.0.0.1:9")  # nothing listens on port 9
    agent = unit.agent()
    agent.want("1.1.0", config_version=4)
    _tick(agent)
    record = unit.record
    assert record is not None and record.state == "downloading" and record.error
    unit.settings = unit.settings.model_copy(update={"repo_url": repo.url})
    agent.fetcher.repo_url = repo.url  # the network is back
    unit.wall += 300
    _tick(agent)
    assert unit.record == record, "not before the retry delay"
    unit.wall += 301
    _tick(agent)
    retried = unit.record
    assert retried is not None and retried.state == "staged"


@pytest.mark.parametrize(
    ("local", "switches"),
    [("21:56", False), ("22:04", False), ("21:50", True), ("06:58", False), ("12:00", True)],
)
def test_no_switch_within_five_minutes_of_the_quiet_hours_changing(
    tmp_path: Path, repo: _Repo, local: str, switches: bool
) -> None:
    unit = _Unit(tmp_path, repo)
    agent = unit.agent()
    agent.want("1.1.0", config_version=4)
    _tick(agent)
    hour, minute = map(int, local.split(":"))
    now = datetime(2026, 12, 5, hour, minute, tzinfo=QUIET_HOURS_TZ)
    assert _tick(agent, now=now, quiet_hours=(time(22), time(7))) is switches


def _guard(unit: _Unit, *extra: str) -> subprocess.CompletedProcess[str]:
    """The boot guard as deploy/doorscan-unit.service runs it (the system's Python alone)."""
    command = [sys.executable, "-I", "-S", str(GUARD), "--root", str(unit.root)]
    command += ["--record", str(unit.data / "update.json"), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _switched(unit: _Unit, **changes: Any) -> None:
    agent = unit.agent()
    agent.want("1.1.0", config_version=4)
    _tick(agent)
    assert _tick(agent)
    if changes:
        record = unit.record
        assert record is not None
        write_record(unit.data / "update.json", UpdateRecord(**{**record.__dict__, **changes}))


def test_the_boot_guard_rolls_back_a_release_that_keeps_failing_to_start(
    tmp_path: Path, repo: _Repo
) -> None:
    unit = _Unit(tmp_path, repo)
    assert _guard(unit).stdout == "", "no update: nothing to say"
    _switched(unit, deadline=wall_time.time() + 600)  # the guard reads the real clock
    for start in range(1, MAX_STARTS + 1):
        done = _guard(unit)
        assert done.returncode == 0, done.stderr
        assert f"start {start} of {MAX_STARTS}" in done.stdout
        assert unit.slots.current() == "1.1.0"
    done = _guard(unit)
    assert "rolled back to 1.0.0" in done.stdout
    record = unit.record
    assert record is not None and record.state == "rolled_back"
    assert record.error == f"boot guard: it failed to confirm itself in {MAX_STARTS} starts"
    assert (unit.slots.current(), unit.slots.previous()) == ("1.0.0", "1.1.0")
    assert unit.greeting() == "xin chào 1.0.0"
    assert _guard(unit).stdout == "", "rolled back: nothing more to do"


def test_the_boot_guard_rolls_back_once_the_deadline_has_passed(
    tmp_path: Path, repo: _Repo
) -> None:
    unit = _Unit(tmp_path, repo)
    _switched(unit, deadline=1.0)  # long past
    assert "did not confirm itself before its deadline" in _guard(unit).stdout
    assert unit.slots.current() == "1.0.0"


def test_the_boot_guard_leaves_a_link_a_technician_moved(tmp_path: Path, repo: _Repo) -> None:
    unit = _Unit(tmp_path, repo)
    _switched(unit, starts=MAX_STARTS, deadline=wall_time.time() + 600)
    unit.slots.roll_back()  # by hand, before the next start
    before = unit.record
    assert _guard(unit).stdout == ""
    assert unit.record == before and unit.slots.current() == "1.0.0"


def test_an_unreadable_record_is_no_update(tmp_path: Path, repo: _Repo) -> None:
    unit = _Unit(tmp_path, repo)
    (unit.data / "update.json").write_text("{not json")
    done = _guard(unit)
    assert done.returncode == 0 and "unreadable" in done.stderr
    assert unit.agent().status_fields() == {}


def test_the_running_release_is_read_from_the_interpreters_folder(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    (root / "releases" / "1.4.0").mkdir(parents=True)
    assert running_release(root, str(root / "releases" / "1.4.0")) == "1.4.0"
    (root / "current").symlink_to("releases/1.4.0")
    assert running_release(root, str(root / "current")) == "1.4.0"
    assert running_release(root, sys.prefix) is None


def test_a_switch_cut_short_before_the_link_moved_is_done_again(
    tmp_path: Path, repo: _Repo
) -> None:
    """Power lost between writing "switched" and moving ``current``: the old release
    starts, the guard leaves it (not the release the record is about), and it switches."""
    unit = _Unit(tmp_path, repo)
    agent = unit.agent()
    agent.want("1.1.0", config_version=4)
    _tick(agent)
    staged = unit.record
    assert staged is not None
    write_record(
        unit.data / "update.json",
        UpdateRecord(**{**staged.__dict__, "state": "switched", "previous": "1.0.0"}),
    )
    assert unit.slots.current() == "1.0.0"
    assert _guard(unit).stdout == ""
    again = unit.agent()
    assert not again.awaiting_confirmation()
    again.want("1.1.0", config_version=4)
    assert _tick(again)
    assert unit.slots.current() == "1.1.0" and unit.greeting() == "xin chào 1.1.0"


def _guide_part_11() -> str:
    guide = (ROOT / "docs" / "field-guide.md").read_text(encoding="utf-8")
    return guide.split("## 11. Updates and rollback", 1)[1].split("\n## ", 1)[0]


def test_the_field_guides_rollout_commands_are_the_hubs_own() -> None:
    from hub.cli import build_parser as hub_parser

    block = _guide_part_11().split("```", 2)[1]
    commands = [shlex.split(line, comments=True) for line in block.strip().splitlines()]
    assert [c[:2] for c in commands] == [["doorscan-hub", "fleet-update"]] * 3
    for words in commands:
        args = hub_parser().parse_args(words[1:])
        assert args.version == "1.5.0"


def test_the_field_guides_defaults_are_the_units() -> None:
    """The numbers part 11 gives: a quiet minute, 10 minutes to confirm, 3 starts, the
    retry after 10 minutes, 5 minutes around the quiet hours, the checks it names."""
    from device import update_agent

    text = " ".join(_guide_part_11().split())
    defaults = UpdatesConfig(repo_url="https://hub.local/releases", trusted_root=Path("r.json"))
    assert (defaults.quiet_s, defaults.confirm_within_s) == (60, 600)
    assert "no scan for a minute (`updates.quiet_s`)" in text
    assert "within 10 minutes of the switch (`updates.confirm_within_s`)" in text
    assert MAX_STARTS == 3 and "after the third one" in text
    assert update_agent.RETRY_UNAVAILABLE_S == 600 and "tried again 10 minutes later" in text
    assert update_agent.QUIET_HOURS_EDGE_S == 300 and "within 5 minutes of the quiet" in text
    checks = ("green LED", "red LED", "buzzer", "camera", "broker", "disk")
    assert checks == update_agent.POST_UPDATE_CHECKS
    assert "(LEDs, buzzer, camera, broker, disk; not the clock)" in text


def test_going_back_by_hand_as_the_field_guide_prints_it(tmp_path: Path, repo: _Repo) -> None:
    unit = _Unit(tmp_path, repo)
    _switched(unit, deadline=wall_time.time() + 600)
    (line,) = [
        s for s in re.findall(r"`([^`]*)`", _guide_part_11()) if s.startswith("sudo -u doorscan ln")
    ]
    command = line.removeprefix("sudo -u doorscan ").replace("/opt/doorscan", str(unit.root))
    subprocess.run(["bash", "-c", command], check=True)
    assert (unit.slots.current(), unit.greeting()) == ("1.0.0", "xin chào 1.0.0")
    assert _guard(unit).stdout == "", "the boot guard leaves a link a technician moved"
    assert unit.slots.current() == "1.0.0"
