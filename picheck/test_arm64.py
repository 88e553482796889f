"""The unit on aarch64 Debian Bookworm (Raspberry Pi OS's base), under emulation.

In the order a unit lives it: the real deploy/install-unit.sh installs it (not a dry run;
it finds no running systemd and says so), the self-test passes with mock pins and image
frames, scans reach a hub on the host and are acked, and a signed update from the
release the installer put there to the next one is applied and confirmed, then a bad
release rolls back by itself, all inside the same root. The releases are built on the
host with the documented command for the Pi's platform (aarch64 wheels).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from device.releases import ReleaseSlots
from device.state import UnitState
from device.update_agent import POST_UPDATE_CHECKS
from doorscan import __version__
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from doorscan.wire import (
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
)
from picheck.conftest import UNIT_USER, ArmRoot
from provisioning.cli import main as provisioning
from tests.hubstore import open_store
from tests.test_fleet_update import (
    ROOT,
    Service,
    _build_from,
    _copy_of_checkout,
    _fleet_update,
    _get,
    _hub,
)
from tests.test_hub_config import _publish
from tests.test_status import Watcher
from tests.waiting import wait_for

UNIT = "pi-door-1"
CONFIG = "/etc/doorscan/unit.json"
MOCK_PINS = {"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def installed(arm_root: ArmRoot) -> ArmRoot:
    """deploy/install-unit.sh, run for real inside the root from a copy of this tree."""
    source = arm_root.inside("/root/doorscan-src")
    source.mkdir()
    _copy_of_checkout(source)
    (source / "docs").mkdir()
    shutil.copy2(ROOT / "docs" / "field-guide.md", source / "docs" / "field-guide.md")
    done = arm_root.run("bash", "/root/doorscan-src/deploy/install-unit.sh", "--source",
                        "/root/doorscan-src",
                        "--no-picamera2", timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "systemd is not running here" in done.stdout
    return arm_root


def test_the_installer_leaves_a_release_its_link_the_guard_and_an_enabled_service(
    installed: ArmRoot,
) -> None:
    assert installed.run("uname", "-m").stdout.strip() == "aarch64"
    slots = ReleaseSlots(installed.inside("/opt/doorscan"))
    assert (slots.current(), slots.installed()) == (__version__, [__version__])
    guard = installed.inside("/usr/local/lib/doorscan/boot-guard.py")
    assert guard.read_bytes() == (ROOT / "device" / "boot_guard.py").read_bytes()
    assert guard.stat().st_uid == 0, "the guard is root's, not the unit's"
    enabled = installed.run("systemctl", "is-enabled", "doorscan-unit.service")
    assert enabled.stdout.strip() == "enabled", enabled
    uid, _ = installed.owner_ids(UNIT_USER)
    assert installed.inside("/opt/doorscan").stat().st_uid == uid
    assert installed.inside("/opt/doorscan/releases").stat().st_uid == uid
    python = "/opt/doorscan/current/bin/python"
    arch = installed.run(python, "-c", "import platform, zxingcpp; print(platform.machine())",
                         user=UNIT_USER)  # fmt: skip
    assert arch.stdout.strip() == "aarch64", arch.stderr


def _frames(root: ArmRoot) -> None:
    """A card shown between empty frames, in the unit's data folder."""
    frames = root.inside("/var/lib/doorscan/frames")
    frames.mkdir(exist_ok=True)
    for n, person in enumerate(make_people(2, seed=41)):
        Image.fromarray(render_frame(cccd_text(person))).save(frames / f"{n}a.png")
        Image.fromarray(blank_frame()).save(frames / f"{n}b.png")
    uid, gid = root.owner_ids(UNIT_USER)
    for path in [frames, *frames.iterdir()]:
        shutil.chown(path, uid, gid)


def _write_config(root: ArmRoot, broker: LocalBroker, loop: bool = True, **extra: object) -> None:
    """The unit's config; `loop`: the frames start again after the last (a door at work)."""
    config = {
        "unit_id": UNIT,
        "venue_id": "cho",
        "data_dir": "/var/lib/doorscan",
        "debounce_s": 3600,
        "broker": {"host": broker.host, "port": broker.port},
        "frames": {"source": "files", "path": "/var/lib/doorscan/frames", "loop": loop,
                   "pace": True, "fps": 5},
        **extra,
    }  # fmt: skip
    path = root.inside(CONFIG)
    path.write_text(json.dumps(config))
    uid, gid = root.owner_ids(UNIT_USER)
    shutil.chown(path, uid, gid)


def test_the_self_test_passes_with_mock_pins_and_image_frames(
    installed: ArmRoot, broker: LocalBroker
) -> None:
    _frames(installed)
    _write_config(installed, broker, loop=False)
    python = "/opt/doorscan/current/bin/python"
    done = installed.run(python, "-m", "device", "selftest", "--config", CONFIG, "--seconds",
                         "3", user=UNIT_USER, env=MOCK_PINS, cwd="/var/lib/doorscan")  # fmt: skip
    table = dict(re.findall(r"(?m)^(\S+(?: LED)?)\s{2,}(PASS|FAIL)  ", done.stdout))
    # The clock is the host's, which NTP may or may not have vouched for inside a chroot.
    assert {k: v for k, v in table.items() if k != "clock"} == dict.fromkeys(
        POST_UPDATE_CHECKS, "PASS"
    ), done.stdout + done.stderr


@pytest.fixture
def hub(tmp_path: Path, broker: LocalBroker, releases: Path) -> Iterator[tuple[Path, str]]:
    for topic, message in (
        (topic_registry_venue("cho"), VenueRecord(venue_id="cho", name="Chợ Pleiku")),
        (topic_registry_unit(UNIT), UnitRecord(unit_id=UNIT, venue_id="cho")),
    ):
        _publish(broker, topic, encode_message(message), retain=True)
    process, http = _hub(tmp_path, broker, releases)
    try:
        assert wait_for(lambda: _get(f"{http}/releases/metadata/1.root.json"), 60)
        yield tmp_path, http
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet home with 1.0.1 and a bad 1.0.2 built for the Pi (aarch64 wheels)."""
    home = tmp_path_factory.mktemp("fleet")
    assert provisioning(["--home", str(home), "release", "init"]) == 0
    assert provisioning(["--home", str(home), "release", "build", "--version", "1.0.1"]) == 0
    bad = _copy_of_checkout(tmp_path_factory.mktemp("bad-source"))
    selftest = bad / "device" / "selftest.py"
    text, count = re.subn(r"(?m)^MIN_DISK_FREE_MB = \d+", "MIN_DISK_FREE_MB = 10**9",
                          selftest.read_text())  # fmt: skip
    assert count == 1
    selftest.write_text(text)
    _build_from(bad, home, "1.0.2", [])
    return home


def test_scans_reach_the_hub_and_an_update_applies_and_a_bad_one_rolls_back(
    installed: ArmRoot, broker: LocalBroker, hub: tuple[Path, str], releases: Path
) -> None:
    folder, http = hub
    _frames(installed)
    python = "/opt/doorscan/current/bin/python"

    # The bench check of docs/deploy.md, on arm64: scans sent until the hub acks them.
    _write_config(installed, broker, loop=False)
    card = "/var/lib/doorscan/frames/0a.png"
    sent = installed.run(python, "-m", "device", "run", "--config", CONFIG, "--frames", card,
                         "--until-sent", "120", user=UNIT_USER, env=MOCK_PINS,
                         cwd="/var/lib/doorscan")  # fmt: skip
    assert sent.returncode == 0 and "every scan acked by the hub" in sent.stdout, sent

    # The update, then the bad release, with the service's own command lines.
    trusted = installed.inside("/etc/doorscan/release-root.json")
    shutil.copy2(releases / "releases" / "metadata" / "1.root.json", trusted)
    updates = {"repo_url": f"{http}/releases", "trusted_root": "/etc/doorscan/release-root.json",
               "quiet_s": 2, "confirm_within_s": 600}  # fmt: skip
    _write_config(installed, broker, updates=updates)
    lines = (ROOT / "deploy" / "doorscan-unit.service").read_text().splitlines()
    guard = next(line for line in lines if "boot-guard.py" in line).split("=", 1)[1]
    start = next(line for line in lines if line.startswith("ExecStart=")).split("=", 1)[1]
    service = Service(
        installed.command(guard.removeprefix("-").split(), user=UNIT_USER),
        installed.command(start.split(), user=UNIT_USER, env=MOCK_PINS, cwd="/var/lib/doorscan"),
        cwd=None,
        env=dict(os.environ),  # the host's, for chroot itself; inside, `env -i` starts clean
        log=folder / "unit.log",
    )
    watcher = Watcher(broker, UNIT)

    def status() -> dict[str, object]:
        seen = [s for s in watcher.statuses() if s.online]
        return seen[-1].model_dump() if seen else {}

    def at(version: str, state: str, about: str) -> bool:
        now = status()
        return (now.get("software"), now.get("update_state"), now.get("update_version")) == (
            version,
            state,
            about,
        )

    try:
        with service:
            assert wait_for(lambda: status().get("software") == __version__, 120), status()
            _fleet_update(folder, broker, "--version", "1.0.1", "--units", UNIT)
            assert wait_for(lambda: at("1.0.1", "confirmed", "1.0.1"), 900), (
                status(),
                (folder / "unit.log").read_text()[-3000:],
            )
            _fleet_update(folder, broker, "--version", "1.0.2", "--units", UNIT)
            assert wait_for(lambda: at("1.0.1", "rolled_back", "1.0.2"), 900), (
                status(),
                (folder / "unit.log").read_text()[-3000:],
            )
            assert str(status()["update_error"]).startswith("self-test failed: disk:")
            assert wait_for(lambda: status().get("backlog") == 0, 120), status()
            # Switched to 1.0.1, switched to 1.0.2, rolled back: three restarts (exit 75).
            assert service.exits == [75, 75, 75]
    finally:
        watcher.close()
    slots = ReleaseSlots(installed.inside("/opt/doorscan"))
    assert (slots.current(), slots.previous()) == ("1.0.1", "1.0.2")
    with open_store(str(folder / "hub.db")) as store:
        stored = store.unit_traced_scans(UNIT, 0, 2**62)
    with UnitState(installed.inside("/var/lib/doorscan/state.json")) as state:
        counters = state.counters()
    journaled = counters.get("accepted", 0) + counters.get("recorded_offline", 0)
    # The bench check's scan, then two people under each release that scanned.
    assert journaled >= 5 and len(stored) == journaled, counters


CORPUS = ROOT.parent / "shared" / "corpus" / "qr-photos"
_READ_CORPUS = """
import json, sys
import numpy as np
from PIL import Image
from device.decoders import make_decoder
manifest = json.load(open("manifest.json"))
for name in ("zxing", "zbar"):
    read, wrong = 0, []
    with make_decoder(name) as decoder:
        for entry in manifest:
            grey = np.asarray(Image.open(entry["file"]).convert("L"))
            texts = [s.text for s in decoder.decode(grey) if s.text is not None]
            wrong += [entry["file"] for t in texts if t != entry["expected"]]
            read += entry["expected"] in texts
    print(json.dumps({"decoder": name, "read": read, "of": len(manifest), "wrong": wrong}))
"""


def test_the_photo_corpus_reads_on_arm64_as_on_the_host(installed: ArmRoot) -> None:
    """The real photographs through both decoders' aarch64 wheels: no wrong text, and at
    least the corpus's baseline (its README), as tests/test_decoders.py asks of the host."""
    if not (CORPUS / "manifest.json").is_file():
        pytest.skip(f"the shared QR photo corpus is not at {CORPUS}")
    shutil.copytree(CORPUS, installed.inside("/root/corpus"))
    python = "/opt/doorscan/current/bin/python"
    done = installed.run(python, "-c", _READ_CORPUS, cwd="/root/corpus", timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["decoder"]: r for r in map(json.loads, done.stdout.splitlines())}
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    total = re.search(r"^\|\s*total\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", readme, re.M)
    assert total, "the corpus README has no 'total' row"
    baseline = {"zxing": int(total[2]), "zbar": int(total[3])}
    for name, result in results.items():
        print(f"arm64 {name}: {result['read']} of {result['of']} photos read")
        assert result["of"] == int(total[1]) and not result["wrong"], result
        assert result["read"] >= baseline[name], result
    assert set(results) == {"zxing", "zbar"}
