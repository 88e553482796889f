"""docs/deploy.md, run: every ```sh block of the page, in order, in one shell.

The page is the operator's path from a fresh machine to a door unit's first scan on the
hub's visitor list. It is run as printed, from a copy of the source tree, with its own
variables pointing at a scratch root and free ports (``ROOT``, ``HUB_HOST``, ``MQTT_PORT``,
``HTTP_PORT``, ``PG_HOST``). Only what a shared test machine cannot do is stood in for,
by the few shell functions of `SHIM`:

* ``sudo`` runs the command as root (the test's user); ``sudo -u postgres`` reaches the
  test's PostgreSQL server over TCP.
* ``systemctl`` (there is no systemd here) runs the installed unit's ``ExecStart`` line as
  it is written, its paths under ``ROOT``: the hub in the background until ``stop``
  (which must end it with exit 0), the purge and anchor services to completion, and
  Mosquitto with the installed ``conf.d/doorscan.conf`` (started as root, Mosquitto reads
  its key as the ``mosquitto`` user, so the installer's owners are tested for real).

The installer really makes the venv and installs doorscan into it; every ``doorscan-*``
command the page runs is that venv's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from doorscan.localbroker import free_port
from tests.hubdb import PG_URL

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "deploy.md"
PG_ROLE, PG_DB = "doorscan-hub", "doorscan"

SHIM = r"""
set -euo pipefail
LOGS="$SHIM_LOGS"
sudo() {
    if [[ "$1" == "-u" ]]; then
        local who="$2"
        shift 2
        if [[ "$who" == postgres ]]; then
            PGHOST=127.0.0.1 PGUSER=postgres "$@"
            return
        fi
    fi
    "$@"
}
_exec_start() {
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$ROOT/etc/systemd/system/$1.service" |
        sed -n 's/^ExecStart=//p' | sed -E "s#(^| )/(etc|var|opt)/#\1$ROOT/\2/#g"
}
_wait_line() {  # FILE TEXT PID
    for _ in $(seq 600); do
        grep -q "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; return 1; }
        sleep 0.1
    done
    cat "$1" >&2
    return 1
}
_stop() {  # NAME
    local pid
    pid="$(cat "$LOGS/$1.pid" 2>/dev/null)" || return 0
    rm -f "$LOGS/$1.pid"
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    [[ "$rc" -eq 0 ]] || { echo "$1 stopped with exit $rc" >&2; cat "$LOGS/$1.log" >&2; return 1; }
}
systemctl() {
    local action="$1" unit argv
    shift
    for unit in "$@"; do
        unit="${unit%.service}"
        case "$action:$unit" in
            start:mosquitto | restart:mosquitto)
                _stop mosquitto
                sed -E "s#/etc/mosquitto/#$ROOT/etc/mosquitto/#" \
                    "$ROOT/etc/mosquitto/conf.d/doorscan.conf" > "$LOGS/mosquitto.conf"
                printf 'log_dest file %s\n' "$LOGS/mosquitto.log" >> "$LOGS/mosquitto.conf"
                printf 'log_type all\n' >> "$LOGS/mosquitto.conf"
                : > "$LOGS/mosquitto.log"
                chmod 0666 "$LOGS/mosquitto.log"
                mosquitto -c "$LOGS/mosquitto.conf" &
                echo $! > "$LOGS/mosquitto.pid"
                _wait_line "$LOGS/mosquitto.log" "running" "$!"
                ;;
            start:doorscan-hub | restart:doorscan-hub)
                _stop doorscan-hub
                # Each start's output is kept: the test reads the whole story.
                cat "$LOGS/doorscan-hub.log" >> "$LOGS/doorscan-hub.earlier.log" 2>/dev/null || true
                read -ra argv <<< "$(_exec_start doorscan-hub)"
                "${argv[@]}" > "$LOGS/doorscan-hub.log" 2>&1 &
                echo $! > "$LOGS/doorscan-hub.pid"
                _wait_line "$LOGS/doorscan-hub.log" "hub ready" "$!"
                ;;
            stop:doorscan-hub) _stop doorscan-hub ;;
            start:doorscan-hub-purge | start:doorscan-hub-anchor)
                read -ra argv <<< "$(_exec_start "$unit")"
                "${argv[@]}"
                ;;
            *) echo "systemctl shim: $action $unit is not something this page does" >&2; return 2 ;;
        esac
    done
}
_cleanup() {
    _stop doorscan-hub || true
    _stop mosquitto || true
}
trap _cleanup EXIT
"""


def sh_blocks(text: str) -> list[str]:
    """The page's ```sh blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _drop_pg() -> None:
    _psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    _psql(f'DROP ROLE IF EXISTS "{PG_ROLE}"')


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A world-traversable folder: Mosquitto reads its files as the mosquitto user."""
    folder = Path(tempfile.mkdtemp(prefix="doorscan-deploy-"))
    folder.chmod(0o755)
    _drop_pg()
    try:
        yield folder
    finally:
        _drop_pg()
        shutil.rmtree(folder, ignore_errors=True)


def _source_copy(into: Path) -> Path:
    """The committed tree (git ls-files) plus what is changed in the work tree: what a
    clean clone holds, so nothing built or run here leaks into the checkout."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = REPO / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def test_every_block_names_only_what_the_shim_knows() -> None:
    """A control on the runner: a page whose blocks call systemctl for something the shim
    does not know fails, rather than passing by doing nothing."""
    script = SHIM + "\nsystemctl start something-else\n"
    env = {**os.environ, "SHIM_LOGS": "/nonexistent", "ROOT": "/nonexistent"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 2 and "not something this page does" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the page installs as root (make test runs as root)")
def test_the_deploy_page_runs_end_to_end(scratch: Path) -> None:
    blocks = sh_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10, "docs/deploy.md lost its command blocks"
    source = _source_copy(scratch / "src")
    root = scratch / "root"
    root.mkdir(mode=0o755)
    boot = scratch / "bootfs"  # the SD card's boot partition
    boot.mkdir()
    logs = scratch / "logs"
    logs.mkdir(mode=0o777)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DOORSCAN_", "VIRTUAL"))},
        "ROOT": str(root),
        "HUB_HOST": "localhost",
        "MQTT_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "PG_HOST": "127.0.0.1",
        "BOOT": str(boot),
        "SHIM_LOGS": str(logs),
        "HOME": str(scratch),
    }
    script = SHIM + "\n".join(f"# -- block {i + 1}\n{block}" for i, block in enumerate(blocks))
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    hub_log = "".join(
        path.read_text()
        for path in (logs / "doorscan-hub.earlier.log", logs / "doorscan-hub.log")
        if path.exists()
    )
    assert proc.returncode == 0, output[-6000:] + "\n--- hub log ---\n" + hub_log[-3000:]
    assert "Traceback" not in output + hub_log, output[-6000:] + hub_log[-3000:]
    # unit-config used its own certificate: the running hub was never pushed off the broker.
    assert "unit-config cho-pleiku-door-1: version 1 published" in output, output[-6000:]
    assert "hub lost the broker" not in hub_log, hub_log[-3000:]
    # What each step promised, as the page's own commands printed it.
    assert "ok    fleet keys  match the fleet's keys" in output, output[-6000:]
    assert "FAIL" not in output, output[-6000:]
    assert "every scan acked by the hub" in output, output[-6000:]
    # The tracer's table: the card read at the bench, in Vietnam time.
    assert re.search(r"^\S+\+07:00  Rơ Châm H'Hen  \w{10}  card$", output, re.M), output[-6000:]
    assert "purged everything older than" in output and "audit anchor {" in output
    assert "0 dead letters (newest first)" in output, output[-6000:]
    assert "0 dead letters replayed: would recover 0" in output, output[-6000:]
    # The PostgreSQL section: the hub opened the new database and started on it.
    assert "ok    database    postgresql://doorscan-hub@127.0.0.1/doorscan opened" in output
    assert output.count("ok    fleet keys  match the fleet's keys") == 2, output[-6000:]
    # The broker read its key as the mosquitto user, from the files the installer owned.
    assert "Opening ipv4 listen socket" in (logs / "mosquitto.log").read_text()
