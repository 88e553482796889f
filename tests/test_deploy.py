"""deploy/: the systemd units, the install script's plan, the broker config example."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import PinsConfig
from doorscan import __version__
from provisioning.broker_pki import mosquitto_conf_text

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRIPT = DEPLOY / "install-unit.sh"
# What a real run would create or change; a dry run must leave each as it was.
TOUCHED = [
    Path("/opt/doorscan"),
    Path("/etc/doorscan"),
    Path("/var/lib/doorscan"),
    Path("/etc/systemd/system/doorscan-unit.service"),
    Path("/etc/systemd/journald.conf.d/doorscan.conf"),
]


def _settings(unit_file: Path) -> dict[str, list[str]]:
    """Key -> values of a systemd unit file (keys may repeat, as ExecStartPre does)."""
    settings: dict[str, list[str]] = {}
    logical = unit_file.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_unit_service_asks_for_what_the_issue_needs() -> None:
    unit = _settings(DEPLOY / "doorscan-unit.service")
    for key, value in {
        "Type": "notify",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "doorscan",
        "SupplementaryGroups": "video gpio",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/doorscan /opt/doorscan",
        "NoNewPrivileges": "true",
    }.items():
        assert unit[key] == [value], key
    assert unit["ExecStart"] == [
        "/opt/doorscan/current/bin/python -m device run --config /etc/doorscan/unit.json"
    ]
    assert unit["ExecStartPre"][0] == (
        "-/usr/bin/python3 /usr/local/lib/doorscan/boot-guard.py --root /opt/doorscan "
        "--record /var/lib/doorscan/update.json"
    )
    assert unit["ExecStartPre"][1].startswith(
        "+/opt/doorscan/current/bin/python -m device import-bundle"
    )


def _verifiable_copy(service: str, tmp_path: Path) -> Path:
    """The unit with its programs pointed at ones that exist here (verify checks them)."""
    text = (DEPLOY / service).read_text(encoding="utf-8")
    text = text.replace("/opt/doorscan/current/bin/python", sys.executable)
    text = text.replace("/opt/doorscan/venv/bin/doorscan-hub", sys.executable)
    copy = tmp_path / service
    copy.write_text(text, encoding="utf-8")
    return copy


def systemd_verify(path: Path) -> str:
    """`systemd-analyze verify` of a unit file: its complaints, empty if none."""
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("service", ["doorscan-unit.service", "doorscan-hub.service"])
def test_systemd_analyze_verify_is_clean(service: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    assert systemd_verify(_verifiable_copy(service, tmp_path)) == ""
    # Control: the same check does object to a unit with a misspelt key.
    broken = _verifiable_copy(service, tmp_path)
    broken.write_text(broken.read_text().replace("Restart=", "Restrat="), encoding="utf-8")
    assert "Restrat" in systemd_verify(broken)


@pytest.mark.parametrize("script", ["install-unit.sh", "install-hub.sh", "../picheck/root.sh"])
def test_install_script_is_shellcheck_clean(script: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed; `apt-get install shellcheck`")
    done = subprocess.run(
        ["shellcheck", "--severity=style", str(DEPLOY / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def _dry_run(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dry_run_prints_the_same_plan_twice_and_changes_nothing() -> None:
    before = {path: path.exists() for path in TOUCHED}
    first, second = _dry_run(), _dry_run()
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # an idempotent plan
    assert {path: path.exists() for path in TOUCHED} == before
    steps = [line for line in first.stdout.splitlines() if line.startswith("+ ")]
    source = str(SCRIPT.parent.parent)
    for expected in [
        "+ apt-get install -y --no-install-recommends python3-picamera2 python3-venv"
        " python3-pip libzbar0",
        "+ install -d -o doorscan -g doorscan -m 0750 /var/lib/doorscan",
        f"+ /opt/doorscan/releases/{__version__}/bin/pip install --upgrade --no-cache-dir {source}",
        f"+ ln -sfn releases/{__version__} /opt/doorscan/current",
        f"+ install -m 0644 {source}/device/boot_guard.py /usr/local/lib/doorscan/boot-guard.py",
        f"+ install -m 0644 {source}/deploy/doorscan-unit.service"
        " /etc/systemd/system/doorscan-unit.service",
        "+ systemctl enable doorscan-unit.service",
    ]:
        assert expected in steps, expected
    venv = [s for s in steps if "venv" in s and "-m venv" in s]
    release = f"/opt/doorscan/releases/{__version__}"
    if not Path(release, "bin", "python").exists():
        assert venv == [f"+ python3 -m venv --system-site-packages {release}"]
    # The order matters: packages before the venv that must see them, the unit file
    # before it is enabled.
    apt = next(i for i, s in enumerate(steps) if s.startswith("+ apt-get install"))
    pip = next(i for i, s in enumerate(steps) if "/bin/pip install" in s)
    unit_file = next(i for i, s in enumerate(steps) if s.endswith("/doorscan-unit.service"))
    enable = steps.index("+ systemctl enable doorscan-unit.service")
    assert apt < pip < unit_file < enable


def test_install_script_refuses_a_folder_that_is_not_doorscan(tmp_path: Path) -> None:
    done = _dry_run("--source", str(tmp_path))
    assert done.returncode == 2
    assert "is not a doorscan source tree" in done.stderr
    assert done.stdout == ""
    unknown = _dry_run("--frobnicate")
    assert unknown.returncode == 2 and "unknown option --frobnicate" in unknown.stderr


def test_mosquitto_example_matches_what_broker_files_writes() -> None:
    example = (DEPLOY / "mosquitto" / "doorscan.conf.example").read_text(encoding="utf-8")
    directives = [line for line in example.splitlines() if line and not line.startswith("#")]
    written = mosquitto_conf_text(8883, Path("/etc/mosquitto/doorscan"))
    assert directives == [line for line in written.splitlines() if not line.startswith("#")]


def test_field_guide_wiring_table_follows_the_config_defaults() -> None:
    guide = (DEPLOY.parent / "docs" / "field-guide.md").read_text(encoding="utf-8")
    pins = PinsConfig()
    for row in (
        f"| green LED (+ 330 Ω) | {pins.green_led} |",
        f"| red LED (+ 330 Ω) | {pins.red_led} |",
        f"| buzzer (+) | {pins.buzzer} |",
    ):
        assert row in guide, row
    for pin in (pins.green_led, pins.red_led, pins.buzzer):
        assert f"GPIO{pin} (" in guide  # drawn on the header diagram too


def test_no_picamera2_leaves_out_only_the_raspberry_pi_camera_stack() -> None:
    """For plain Debian arm64 (`make pi-check`'s root), whose archive has no picamera2."""
    done = _dry_run("--no-picamera2")
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("+ apt-get install")]
    assert steps == [
        "+ apt-get install -y --no-install-recommends python3-venv python3-pip libzbar0"
    ]
