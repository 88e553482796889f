"""The offline config bundle: written by provisioning onto a "boot partition", taken in
by the unit's command line, refused whole when it is damaged.

The boot partition is a plain folder here (the code does nothing FAT-specific); the
unit's side runs as `python -m device import-bundle` in a subprocess, as at boot.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import load_config
from doorscan.bundle import BUNDLE_DIR, MANIFEST
from provisioning.cli import main

UNIT = "bv-gia-lai-door-1"
UNIT_SERVICE = Path(__file__).resolve().parent.parent / "deploy" / "doorscan-unit.service"


def ok(home: Path, command: str) -> None:
    assert main(["--home", str(home), *shlex.split(command)]) == 0, command


def import_bundle(boot: Path, into: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", "import-bundle", "--boot", str(boot), "--into", str(into)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """What `add-device --tls --out` wrote for one unit: config, CA, cert, key, keys."""
    home, out = tmp_path / "fleet", tmp_path / "units" / UNIT
    ok(home, "init")
    ok(home, "add-venue --id bv-gia-lai --name 'Bệnh viện Gia Lai'")
    ok(
        home,
        f"add-device --id {UNIT} --venue bv-gia-lai --tls --broker-host hub.local "
        f"--broker-port 8883 --data-dir /var/lib/doorscan --out {out}",
    )
    return out


def written_bundle(unit_dir: Path, boot: Path) -> Path:
    boot.mkdir(exist_ok=True)
    ok(
        unit_dir.parent.parent / "fleet",
        f"bundle --config {unit_dir / (UNIT + '.json')} --boot {boot}",
    )
    return boot / BUNDLE_DIR


def test_a_bundle_is_taken_in_whole_and_then_deleted(unit_dir: Path, tmp_path: Path) -> None:
    bundle = written_bundle(unit_dir, tmp_path / "boot")
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    expected = {p.name for p in unit_dir.iterdir()}
    assert set(manifest["files"]) == expected  # the config and exactly what it names
    into = tmp_path / "etc-doorscan"
    done = import_bundle(tmp_path / "boot", into)
    assert done.returncode == 0, done.stderr
    assert f"imported the config of {UNIT}: {into / 'unit.json'}" in done.stdout
    # The config under the one name the service runs, whatever provisioning called it.
    installed = {name: "unit.json" if name == f"{UNIT}.json" else name for name in expected}
    for name, target in installed.items():
        assert (into / target).read_bytes() == (unit_dir / name).read_bytes(), name
    assert sorted(p.name for p in into.iterdir()) == sorted(installed.values())
    assert (into / f"{UNIT}-key.pem").stat().st_mode & 0o777 == 0o600
    assert (into / "ca.pem").stat().st_mode & 0o777 == 0o644
    config = load_config(into / "unit.json")
    assert config.broker.key_file == (into / f"{UNIT}-key.pem").resolve()
    assert not bundle.exists()  # the private key does not stay on the FAT partition
    # Nothing there on the next boot: nothing to do, and nothing changed.
    again = import_bundle(tmp_path / "boot", into)
    assert again.returncode == 0 and "no bundle" in again.stdout


def _service_commands(key: str) -> list[list[str]]:
    """The argv of each `key=` line of the unit's service ('+' and continuations removed)."""
    text = UNIT_SERVICE.read_text(encoding="utf-8").replace("\\\n", " ")
    prefix = f"{key}="
    return [
        shlex.split(line.removeprefix(prefix).lstrip("+"))
        for line in text.splitlines()
        if line.startswith(prefix)
    ]


def test_the_service_runs_the_config_a_bundle_or_enrollment_writes(
    unit_dir: Path, tmp_path: Path
) -> None:
    """The service's own commands, its paths moved into tmp_path: the import it runs first
    writes the file its ExecStart reads, and enrollment's default is that file too."""
    (run,) = _service_commands("ExecStart")
    config_path = Path(run[run.index("--config") + 1])
    (take,) = [argv for argv in _service_commands("ExecStartPre") if "import-bundle" in argv]
    into = Path(take[take.index("--into") + 1])
    boot = Path(take[take.index("--boot") + 1])
    assert config_path.parent == into
    moved = {str(boot): str(tmp_path / "boot"), str(into): str(tmp_path / "etc-doorscan")}
    written_bundle(unit_dir, tmp_path / "boot")
    done = subprocess.run(
        [sys.executable, *[moved.get(arg, arg) for arg in take[1:]]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert load_config(tmp_path / "etc-doorscan" / config_path.name).unit_id == UNIT
    ok(tmp_path / "fleet", f"enroll-bootstrap --server-url https://hub.local:8443 --out {tmp_path}")
    bootstrap = json.loads((tmp_path / "bootstrap.json").read_text(encoding="utf-8"))
    assert bootstrap["config_file"] == str(config_path)


@pytest.mark.parametrize("damage", ["edited", "missing", "outside", "manifest"])
def test_a_damaged_bundle_is_refused_and_changes_nothing(
    unit_dir: Path, tmp_path: Path, damage: str
) -> None:
    bundle = written_bundle(unit_dir, tmp_path / "boot")
    manifest_path = bundle / MANIFEST
    if damage == "edited":
        config = bundle / f"{UNIT}.json"
        config.write_text(config.read_text(encoding="utf-8").replace("8883", "1883"))
    elif damage == "missing":
        (bundle / "ca.pem").unlink()
    elif damage == "outside":
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["files"]["../../etc-doorscan/evil"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    else:
        manifest_path.write_text("{not json")
    into = tmp_path / "etc-doorscan"
    into.mkdir()
    (into / "old.json").write_text("the unit's current config")
    done = import_bundle(tmp_path / "boot", into)
    assert done.returncode == 1
    assert "import-bundle: error:" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in into.iterdir()] == ["old.json"]
    assert bundle.exists()  # kept, so the technician can see what was wrong


def test_bundle_refuses_a_config_that_names_files_elsewhere(
    unit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = unit_dir / f"{UNIT}.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["broker"]["ca_file"] = "/etc/ssl/certs/ca.pem"
    config_path.write_text(json.dumps(config))
    (tmp_path / "boot").mkdir()
    home = tmp_path / "fleet"
    code = main(
        [
            "--home",
            str(home),
            "bundle",
            "--config",
            str(config_path),
            "--boot",
            str(tmp_path / "boot"),
        ]
    )
    assert code == 1
    assert "must be a file beside the config" in capsys.readouterr().err
    assert list((tmp_path / "boot").iterdir()) == []


def test_bundle_does_not_overwrite_a_bundle_not_yet_taken_in(
    unit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written_bundle(unit_dir, tmp_path / "boot")
    home = tmp_path / "fleet"
    args = ["--home", str(home), "bundle", "--config", str(unit_dir / f"{UNIT}.json")]
    assert main([*args, "--boot", str(tmp_path / "boot")]) == 1
    assert "--force replaces it" in capsys.readouterr().err
    assert main([*args, "--boot", str(tmp_path / "boot"), "--force"]) == 0


def test_a_unit_added_with_an_update_repository_gets_its_root_of_trust_in_the_bundle(
    tmp_path: Path,
) -> None:
    """``add-device --updates-url``: the config names the repository, the bundle carries
    the fleet's 1.root.json, and the unit's update agent starts from what was imported."""
    from device.update_agent import UpdateAgent

    home, out = tmp_path / "fleet", tmp_path / "units" / UNIT
    ok(home, "init")
    ok(home, "add-venue --id bv-gia-lai --name 'Bệnh viện Gia Lai'")
    add = (
        f"add-device --id {UNIT} --venue bv-gia-lai --broker-host hub.local --insecure "
        f"--data-dir {tmp_path / 'data'} --out {out} --updates-url https://hub.local:8443/releases"
    )
    refused = main(["--home", str(home), *shlex.split(add)])
    assert refused == 1 and not out.exists(), "no repository yet: nothing written"
    ok(home, "release init")
    ok(home, add)
    written = json.loads((out / f"{UNIT}.json").read_text(encoding="utf-8"))
    assert written["updates"] == {
        "repo_url": "https://hub.local:8443/releases",
        "trusted_root": "release-root.json",
    }
    trusted = home / "releases" / "metadata" / "1.root.json"
    assert (out / "release-root.json").read_bytes() == trusted.read_bytes()
    (tmp_path / "boot").mkdir()
    ok(home, f"bundle --config {out / (UNIT + '.json')} --boot {tmp_path / 'boot'} --insecure")
    into = tmp_path / "etc-doorscan"
    assert import_bundle(tmp_path / "boot", into).returncode == 0
    config = load_config(into / "unit.json")
    assert config.updates is not None
    assert config.updates.trusted_root.read_bytes() == trusted.read_bytes()
    agent = UpdateAgent.for_config(config)
    assert agent is not None and agent.fetcher.repo_url == "https://hub.local:8443/releases"
