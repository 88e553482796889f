"""deploy/install-hub.sh and the hub's units, as an operator meets them: the plan a dry run
prints, and real installs into a staging folder (``--root``) checked file by file, with
broker files from `provisioning broker-files` itself. The starter hub.toml is loaded by
the hub's own config loader, and the installed venv runs a unit's command as written.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hub.config import HubConfig, load_hub_config
from tests.hubstore import open_store, vault_key_file
from tests.test_deploy import systemd_verify

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCRIPT = DEPLOY / "install-hub.sh"
EXAMPLE = DEPLOY / "hub.toml.example"
CONFIG = "/etc/doorscan-hub/hub.toml"
HUB_BIN = "/opt/doorscan/venv/bin/doorscan-hub"
HUB_UNITS = [
    "doorscan-hub.service",
    "doorscan-hub-anchor.service",
    "doorscan-hub-anchor.timer",
    "doorscan-hub-purge.service",
    "doorscan-hub-purge.timer",
]
ENABLE = "systemctl enable doorscan-hub.service doorscan-hub-anchor.timer doorscan-hub-purge.timer"
# What a real run would create or change on this machine; no test here may touch them.
TOUCHED = [
    Path("/opt/doorscan"),
    Path("/etc/doorscan-hub"),
    Path("/var/lib/doorscan-hub"),
    Path("/var/lib/doorscan-hub-anchors"),
    Path("/etc/mosquitto/doorscan"),
    Path("/etc/mosquitto/conf.d/doorscan.conf"),
    *(Path("/etc/systemd/system") / unit for unit in HUB_UNITS),
]


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _steps(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("+ ")]


def _exists() -> dict[Path, bool]:
    return {path: path.exists() for path in TOUCHED}


def _tree(root: Path) -> dict[str, int]:
    """Every path under `root` and its mode: what an install left."""
    return {str(p.relative_to(root)): p.lstat().st_mode & 0o7777 for p in root.rglob("*")}


def _exec_start(unit_file: Path) -> list[str]:
    """The unit's ExecStart as argv (continuation lines joined)."""
    text = unit_file.read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def _setting(unit_file: Path, key: str) -> list[str]:
    text = unit_file.read_text(encoding="utf-8")
    return [ln.partition("=")[2] for ln in text.splitlines() if ln.startswith(f"{key}=")]


@pytest.fixture(scope="module")
def broker_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `provisioning broker-files` writes for a hub with two workers."""
    base = tmp_path_factory.mktemp("fleet")
    out = base / "broker"
    for command in (
        "init",
        f"broker-files --out {out} --port 8883 --host hub.local --hub-workers 2",
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "provisioning",
                "--home",
                str(base / "home"),
                *shlex.split(command),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    return out


def test_dry_run_prints_the_same_plan_twice_and_changes_nothing() -> None:
    before = _exists()
    first, second = _run("--dry-run"), _run("--dry-run")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # an idempotent plan
    assert _exists() == before
    steps = _steps(first.stdout)
    expected = [
        "+ apt-get install -y --no-install-recommends python3-venv mosquitto",
        "+ install -d -m 0750 /etc/doorscan-hub",
        "+ chown root:doorscan-hub /etc/doorscan-hub",
        "+ install -d -m 0750 /var/lib/doorscan-hub",
        "+ chown doorscan-hub:doorscan-hub /var/lib/doorscan-hub",
        "+ install -d -m 0750 /var/lib/doorscan-hub-anchors",
        "+ chown doorscan-hub:doorscan-hub /var/lib/doorscan-hub-anchors",
        f"+ /opt/doorscan/venv/bin/pip install --upgrade --no-cache-dir {REPO}",
        *(f"+ install -m 0644 {DEPLOY}/{u} /etc/systemd/system/{u}" for u in HUB_UNITS),
        "+ systemctl daemon-reload",
        f"+ {ENABLE}",
    ]
    if subprocess.run(["id", "-u", "doorscan-hub"], capture_output=True).returncode != 0:
        expected.append(
            "+ useradd --system --user-group --home-dir /var/lib/doorscan-hub --no-create-home"
            " --shell /usr/sbin/nologin doorscan-hub"
        )
    if not Path(CONFIG).exists():
        expected += [f"+ install -m 0640 {EXAMPLE} {CONFIG}", f"+ chown root:doorscan-hub {CONFIG}"]
    for line in expected:
        assert line in steps, line
    assert not any("restart" in s or " start " in s for s in steps)  # not without --start
    assert "postgresql" in first.stdout  # optional: a note, never an apt step
    assert not any("postgresql" in s for s in steps)
    # Packages before the venv, the venv before units that run it, files before enable.
    order = [
        next(i for i, s in enumerate(steps) if s.startswith("+ apt-get install")),
        steps.index("+ chown doorscan-hub:doorscan-hub /var/lib/doorscan-hub"),
        next(i for i, s in enumerate(steps) if "/bin/pip install" in s),
        max(i for i, s in enumerate(steps) if s.startswith("+ install -m 0644 ") and ".timer" in s),
        steps.index("+ systemctl daemon-reload"),
        steps.index(f"+ {ENABLE}"),
    ]
    assert order == sorted(order)
    started = _steps(_run("--dry-run", "--start").stdout)
    restart = "+ systemctl restart doorscan-hub.service doorscan-hub-anchor.timer"
    assert started.index(f"+ {ENABLE}") < next(
        i for i, s in enumerate(started) if s.startswith(restart)
    )


def test_root_install_lays_out_files_modes_and_planned_owners(
    tmp_path: Path, broker_files: Path
) -> None:
    before = _exists()
    root = tmp_path / "root"
    root.mkdir()
    done = _run("--root", root, "--no-venv", "--broker-files", broker_files)
    assert done.returncode == 0, done.stderr
    assert _exists() == before  # nothing written outside --root
    assert not (root / "opt/doorscan/venv").exists()
    modes = _tree(root)
    for path, mode in {
        "etc/doorscan-hub": 0o750,
        "var/lib/doorscan-hub": 0o750,
        "var/lib/doorscan-hub-anchors": 0o750,
        "etc/doorscan-hub/hub.toml": 0o640,
        "etc/doorscan-hub/ca.pem": 0o644,
        "etc/doorscan-hub/hub-cert.pem": 0o644,
        "etc/doorscan-hub/hub-key.pem": 0o400,
        "etc/doorscan-hub/hub-2-key.pem": 0o400,
        "etc/mosquitto/doorscan": 0o750,
        "etc/mosquitto/doorscan/broker-key.pem": 0o640,
        "etc/mosquitto/doorscan/broker-cert.pem": 0o644,
        "etc/mosquitto/doorscan/crl.pem": 0o644,
        "etc/mosquitto/doorscan/acl": 0o644,
        "etc/mosquitto/conf.d/doorscan.conf": 0o644,
        "opt/doorscan/README.md": 0o644,
        **{f"etc/systemd/system/{unit}": 0o644 for unit in HUB_UNITS},
    }.items():
        assert modes.get(path) == mode, path
    # The commands on everyone's PATH, sudo's too (secure_path has /usr/local/bin).
    for tool in ("doorscan-hub", "doorscan-provisioning", "doorscan-device"):
        link = root / "usr/local/bin" / tool
        assert link.readlink() == root / "opt/doorscan/venv/bin" / tool
    # Only the hub's pairs: the provisioning tool's key stays with the technician.
    assert not any("provisioning-" in path for path in modes)
    for name in ("broker-key.pem", "crl.pem", "acl"):
        source = (broker_files / name).read_bytes()
        assert (root / "etc/mosquitto/doorscan" / name).read_bytes() == source
    assert (root / "etc/doorscan-hub/hub-1-cert.pem").read_bytes() == (
        broker_files / "hub-1-cert.pem"
    ).read_bytes()
    # The owners a real run sets, and the other host steps, are in the output as notes.
    notes = done.stdout
    # Mosquitto's owners are given for real where this machine has its user and we are
    # root (as in make test): a scratch install then proves the broker can read its key.
    mosquitto_owned = [
        f"chown root:mosquitto {root}/etc/mosquitto/doorscan/broker-key.pem",
        f"chown root:mosquitto {root}/etc/mosquitto/doorscan\n",
    ]
    key = root / "etc/mosquitto/doorscan/broker-key.pem"
    if os.geteuid() == 0 and _has_user("mosquitto"):
        assert grp.getgrgid(key.stat().st_gid).gr_name == "mosquitto"
        assert not any(f"# not under --root: {line}" in notes for line in mosquitto_owned)
    else:
        assert all(f"# not under --root: {line}" in notes for line in mosquitto_owned)
    for planned in (
        f"chown doorscan-hub:doorscan-hub {root}/etc/doorscan-hub/hub-key.pem",
        f"chown root:doorscan-hub {root}{CONFIG}",
        f"chown doorscan-hub:doorscan-hub {root}/var/lib/doorscan-hub\n",
        "useradd --system --user-group",
        "apt-get install -y --no-install-recommends python3-venv mosquitto",
        ENABLE,
    ):
        assert f"# not under --root: {planned}" in notes, planned
    assert _steps(notes) == []  # a real run, not a plan


def test_installed_mosquitto_conf_names_the_installed_files(
    tmp_path: Path, broker_files: Path
) -> None:
    """broker-files was run without --install-dir, so its conf names the technician's
    folder; the installed conf must name /etc/mosquitto/doorscan, and nothing else."""
    assert str(broker_files) in (broker_files / "mosquitto.conf").read_text(encoding="utf-8")
    root = tmp_path / "root"
    root.mkdir()
    assert _run("--root", root, "--no-venv", "--broker-files", broker_files).returncode == 0
    conf = (root / "etc/mosquitto/conf.d/doorscan.conf").read_text(encoding="utf-8")
    named = re.findall(r"^(?:cafile|certfile|keyfile|crlfile|acl_file) (\S+)$", conf, re.M)
    assert len(named) == 5
    for path in named:
        assert path.startswith("/etc/mosquitto/doorscan/"), path
        assert (root / path.lstrip("/")).is_file(), path
    source = (broker_files / "mosquitto.conf").read_text(encoding="utf-8")
    assert conf == source.replace(str(broker_files), "/etc/mosquitto/doorscan")


def test_installed_units_run_every_command_with_the_config_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert _run("--root", root, "--no-venv").returncode == 0
    installed = root / "etc/systemd/system"
    for unit in HUB_UNITS:
        assert (installed / unit).read_bytes() == (DEPLOY / unit).read_bytes(), unit
    commands = {
        "doorscan-hub.service": ["serve"],
        "doorscan-hub-purge.service": ["purge"],
        "doorscan-hub-anchor.service": ["audit", "anchor"],
    }
    for unit, subcommand in commands.items():
        argv = _exec_start(installed / unit)
        assert argv[: 1 + len(subcommand)] == [HUB_BIN, *subcommand], unit
        assert argv[argv.index("--config") + 1] == CONFIG, unit
        assert not any(arg in argv for arg in ("--db", "--vault-key", "--broker-host")), unit
        assert _setting(installed / unit, "Environment") in ([], ["PYTHONUNBUFFERED=1"]), unit
        # The folders the sandbox lets it write, and its working folder, are installed.
        for setting in ("ReadWritePaths", "WorkingDirectory"):
            for value in _setting(installed / unit, setting):
                for folder in value.split():
                    assert (root / folder.lstrip("/")).is_dir(), (unit, folder)
    purge_timer = _setting(installed / "doorscan-hub-purge.timer", "OnCalendar")
    assert purge_timer == ["daily"]
    assert _setting(installed / "doorscan-hub-purge.timer", "Persistent") == ["true"]
    assert _setting(installed / "doorscan-hub-purge.service", "Type") == ["oneshot"]


def test_a_second_run_keeps_an_edited_hub_toml(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert _run("--root", root, "--no-venv").returncode == 0
    config = root / CONFIG.lstrip("/")
    assert config.read_bytes() == EXAMPLE.read_bytes()
    edited = config.read_text(encoding="utf-8").replace(
        'listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:9090"  # the operator\'s port'
    )
    assert edited != EXAMPLE.read_text(encoding="utf-8")
    config.write_text(edited, encoding="utf-8")
    config.chmod(0o600)
    tree = _tree(root)
    plan = _run("--root", root, "--no-venv", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert not any("hub.toml" in step for step in _steps(plan.stdout))
    again = _run("--root", root, "--no-venv")
    assert again.returncode == 0, again.stderr
    assert f"{config} exists: kept as it is" in again.stdout
    assert config.read_text(encoding="utf-8") == edited
    assert _tree(root) == tree  # the same state, the operator's mode included
    assert load_hub_config(config).http.listen == "127.0.0.1:9090"


def test_starter_hub_toml_loads_and_names_the_installed_files() -> None:
    config = load_hub_config(EXAMPLE)
    assert config.database.url == "/var/lib/doorscan-hub/hub.db"
    assert config.broker.host == "127.0.0.1" and config.broker.effective_port == 8883
    named = [
        config.database.vault_key,
        config.broker.ca_file,
        config.broker.cert_file,
        config.broker.key_file,
        config.keys.seal_key,
        *config.keys.card_keys,
    ]
    for path in named:
        assert path is not None and path.parent == Path("/etc/doorscan-hub"), path
    # The broker files install-hub.sh --broker-files copies, under the names it gives them.
    assert [p.name for p in named[1:4] if p] == ["ca.pem", "hub-cert.pem", "hub-key.pem"]
    assert config.http.listen == "127.0.0.1:8080"  # loopback: HTTPS is the proxy's job


def test_every_commented_setting_in_hub_toml_is_a_real_one_with_its_default(
    tmp_path: Path,
) -> None:
    """Uncommenting a line the file offers never makes a file the hub refuses, and a
    commented default says what the hub really does without it."""
    text = EXAMPLE.read_text(encoding="utf-8")
    offered = re.compile(r"^# (?=[a-z_]+ = )", re.M)
    assert len(offered.findall(text)) >= 10
    uncommented = tmp_path / "hub.toml"
    uncommented.write_text(offered.sub("", text), encoding="utf-8")
    config = load_hub_config(uncommented)
    defaults = HubConfig()
    assert config.ingest == defaults.ingest
    assert config.retention == defaults.retention
    assert config.logging == defaults.logging
    assert config.broker.client_id == defaults.broker.client_id
    assert config.broker.port == load_hub_config(EXAMPLE).broker.effective_port
    assert not config.broker.insecure and not config.http.insecure
    as_written = tomllib.loads(text)
    assert set(as_written) == set(HubConfig.model_fields)  # every table is there to edit


def _verifiable_copies(tmp_path: Path) -> Path:
    """The units with their program pointed at one that exists here (verify checks it);
    together, so a timer finds its service."""
    folder = tmp_path / "units"
    folder.mkdir()
    for unit in HUB_UNITS:
        text = (DEPLOY / unit).read_text(encoding="utf-8").replace(HUB_BIN, sys.executable)
        (folder / unit).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("unit", HUB_UNITS)
def test_systemd_analyze_verify_is_clean(unit: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    copy = _verifiable_copies(tmp_path) / unit
    assert systemd_verify(copy) == ""
    # Control: the same check does object to a misspelt key.
    text = copy.read_text(encoding="utf-8")
    copy.write_text(text.replace("[Unit]\n", "[Unit]\nDescripton=typo\n", 1), encoding="utf-8")
    assert "Descripton" in systemd_verify(copy)


def test_install_script_refuses_what_it_cannot_install_and_changes_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    half = tmp_path / "half"
    half.mkdir()
    (half / "ca.pem").write_text("not all of broker-files", encoding="utf-8")
    refused: list[tuple[list[str | Path], str]] = [
        (["--source", tmp_path], "is not a doorscan source tree"),
        (["--broker-files", half], "lacks broker-cert.pem broker-key.pem crl.pem acl"),
        (["--broker-files", tmp_path / "nowhere"], "is not a folder"),
    ]
    for args, why in refused:
        done = _run("--root", root, *args)
        assert done.returncode == 2, args
        assert why in done.stderr, args
        assert done.stdout == "" and list(root.iterdir()) == [], args
    assert "is not a folder" in _run("--root", tmp_path / "nowhere").stderr
    assert "leave --root out" in _run("--root", "/", "--dry-run").stderr
    unknown = _run("--frobnicate")
    assert unknown.returncode == 2 and "unknown option --frobnicate" in unknown.stderr


def _source_copy(tmp_path: Path) -> Path:
    """The working tree without its venv and caches: pip builds in the source folder
    (build/, *.egg-info), which must not be the checkout."""
    copy = tmp_path / "src"
    shutil.copytree(
        REPO,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    return copy


@pytest.mark.slow
def test_root_install_with_its_venv_runs_the_purge_unit_as_written(tmp_path: Path) -> None:
    """A real venv (about half a minute), then the purge unit's own ExecStart with the
    installed hub.toml, its database moved to a scratch file."""
    root = tmp_path / "root"
    root.mkdir()
    done = _run("--root", root, "--source", _source_copy(tmp_path), timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (root / HUB_BIN.lstrip("/")).is_file()
    database = tmp_path / "hub.db"
    with open_store(database):
        pass  # an empty hub database, as `serve` leaves it on its first start
    config = tmp_path / "hub.toml"
    config.write_text(
        (root / CONFIG.lstrip("/"))
        .read_text(encoding="utf-8")
        .replace("/var/lib/doorscan-hub/hub.db", str(database))
        .replace("/etc/doorscan-hub/hub-vault.key", str(vault_key_file())),
        encoding="utf-8",
    )
    argv = _exec_start(root / "etc/systemd/system/doorscan-hub-purge.service")
    moved = {HUB_BIN: str(root / HUB_BIN.lstrip("/")), CONFIG: str(config)}
    purge = subprocess.run(
        [moved.get(arg, arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert purge.returncode == 0, purge.stderr
    assert "0 scans" in purge.stdout


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
