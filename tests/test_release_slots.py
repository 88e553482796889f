"""Releases installed side by side on a unit, switched and rolled back (`device.releases`).

Real parts: releases published by ``provisioning release build``, served over HTTP and
fetched by `device.updater.ReleaseFetcher`; real venvs, real pip installing the wheels
offline; a real SIGKILL at each step (tests/fault_release.py). The wheels are a small
package of the test's own (doorscan's wheel needs its dependencies' wheels beside it,
which this machine's tests do not download).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from device.releases import InstallFailed, ReleaseSlots
from device.updater import FetchedRelease, ReleaseFetcher
from provisioning.cli import main as provisioning
from tests.test_release import _Quiet

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("1.0.0", "1.1.0")


def _wheel(folder: Path, version: str) -> Path:
    source = folder / f"src-{version}"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        f'[project]\nname = "door-extra"\nversion = "{version}"\n'
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (source / "door_extra.py").write_text(f"GREETING = 'xin chào {version}'\n")
    out = folder / f"wheel-{version}"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True)
    (built,) = out.glob("door_extra-*.whl")
    return built


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FetchedRelease]:
    """Releases 1.0.0 and 1.1.0, published, served and fetched as a unit fetches them."""
    folder = tmp_path_factory.mktemp("releases")
    home = folder / "fleet"
    assert provisioning(["--home", str(home), "release", "init"]) == 0
    for version in VERSIONS:
        wheel = str(_wheel(folder, version))
        build = ["release", "build", "--version", version, "--wheel", wheel]
        assert provisioning(["--home", str(home), *build]) == 0
    handler = partial(_Quiet, directory=str(home / "releases"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        trusted = (home / "releases" / "metadata" / "1.root.json").read_bytes()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        fetcher = ReleaseFetcher(folder / "unit-state", url, trusted)
        return {version: fetcher.fetch(version) for version in VERSIONS}
    finally:
        server.shutdown()
        server.server_close()


def _greeting(slots: ReleaseSlots) -> str:
    """What the release ``current`` points to says, run from its own venv."""
    python = slots.root / "current" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", "import door_extra; print(door_extra.GREETING)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def slots(tmp_path: Path, fetched: dict[str, FetchedRelease]) -> Iterator[ReleaseSlots]:
    """A unit running release 1.0.0."""
    slots = ReleaseSlots(tmp_path / "opt")
    slots.install(fetched["1.0.0"])
    slots.switch("1.0.0")
    yield slots


def test_a_release_installs_beside_the_running_one_switches_and_rolls_back(
    slots: ReleaseSlots, fetched: dict[str, FetchedRelease]
) -> None:
    assert (slots.current(), slots.previous()) == ("1.0.0", None)
    assert _greeting(slots) == "xin chào 1.0.0"
    slots.install(fetched["1.1.0"])
    assert _greeting(slots) == "xin chào 1.0.0"  # installed beside, not yet running
    slots.switch("1.1.0")
    assert (slots.current(), slots.previous()) == ("1.1.0", "1.0.0")
    assert _greeting(slots) == "xin chào 1.1.0"
    assert slots.roll_back() == "1.0.0"
    assert (slots.current(), slots.previous()) == ("1.0.0", "1.1.0")
    assert _greeting(slots) == "xin chào 1.0.0"
    assert sorted(slots.installed()) == ["1.0.0", "1.1.0"]


def test_a_release_that_cannot_be_installed_leaves_the_running_one(
    slots: ReleaseSlots, fetched: dict[str, FetchedRelease]
) -> None:
    broken = fetched["1.1.0"]
    (wheel,) = [p for p in broken.files.values() if p.suffix == ".whl"]
    garbled = wheel.parent / "garbled" / wheel.name
    garbled.parent.mkdir(exist_ok=True)
    garbled.write_bytes(b"not a zip")
    files = {**broken.files, wheel.name: garbled}
    with pytest.raises(InstallFailed, match="installing the wheels"):
        slots.install(FetchedRelease(broken.manifest, files))
    assert slots.installed() == ["1.0.0"] and slots.current() == "1.0.0"
    with pytest.raises(InstallFailed, match="not installed"):
        slots.switch("1.1.0")
    assert _greeting(slots) == "xin chào 1.0.0"


@pytest.mark.parametrize("kill_at", ["venv", "pip", "rename", "previous"])
def test_a_sigkill_at_any_step_leaves_a_unit_that_runs_and_an_update_that_completes(
    slots: ReleaseSlots, fetched: dict[str, FetchedRelease], kill_at: str
) -> None:
    new = fetched["1.1.0"]
    argv = [
        sys.executable,
        str(ROOT / "tests" / "fault_release.py"),
        str(slots.root),
        new.manifest.model_dump_json(),
        json.dumps({name: str(path) for name, path in new.files.items()}),
    ]
    killed = subprocess.run([*argv, kill_at], capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr
    # Power back: the unit runs the old release, whole.
    assert slots.current() == "1.0.0" and _greeting(slots) == "xin chào 1.0.0"
    # The update tried again completes, from whatever the kill left.
    done = subprocess.run([*argv, "never"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "switched 1.1.0" in done.stdout, done.stderr
    assert (slots.current(), slots.previous()) == ("1.1.0", "1.0.0")
    assert _greeting(slots) == "xin chào 1.1.0"
    assert sorted(p.name for p in slots.releases.iterdir()) == ["1.0.0", "1.1.0"]
