"""`make demo`'s job, run as the README says, then the steps it prints to look at its data.

The demo is the README's first promise: a whole day on real parts (Mosquitto, the hub as
a process, units with real decoders) ending in a visitor list and a trace. Nothing else
ran it once, and it had quietly stopped storing anything: every scan of its invented day
was held apart, because the day came before the units' registration.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from doorscan.localbroker import free_port
from tests.test_auth import _child, _stop, _wait_for_line

pytestmark = pytest.mark.broker
PASSWORD = "a long passphrase for the demo"


def test_the_demo_stores_its_day_traces_it_and_its_printed_next_steps_open_the_dashboard(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "doorscan.demo", "--people", "12", "--keep"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    work = Path(re.findall(r"Files kept in (\S+)\. ", out)[0])
    try:
        assert "every scan reached the hub and was acked" in out
        stored = re.search(r"The hub holds (\d+) check-ins of (\d+) people", out)
        assert stored is not None and int(stored.group(1)) > 0, out
        assert "0 scans held apart" in out
        assert re.search(r"Contacts \([1-9]\d*\):", out), out  # the case has F1 contacts
        assert "+07:00" in out and "Z " not in out  # tables in Vietnam time
        # The next steps, as printed: add a user (password on stdin), serve the dashboard.
        steps = [line.strip() for line in out.splitlines() if " -m hub " in line]
        add_user = shlex.split(steps[0].split("#")[0])
        subprocess.run(add_user, input=PASSWORD + "\n", text=True, check=True, timeout=60)
        web = shlex.split(steps[1])
        port = free_port()
        web[web.index("--http") + 1] = f"127.0.0.1:{port}"  # a free port, not 8080
        log = tmp_path / "web.log"
        proc = _child(web[web.index("hub") + 1 :], log)
        try:
            _wait_for_line(log, "hub web ready", proc)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
                login = browser.post("/login", data={"user_id": "tracer", "password": PASSWORD})
                assert login.status_code == 303, login.text
                page = browser.get("/trace")
                assert page.status_code == 200 and "Truy vết" in page.text
        finally:
            _stop(proc, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
