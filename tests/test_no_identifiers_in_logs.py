"""No ID number, name or reason leaves the hub in a URL or a log line.

An outsider's session against the real ``doorscan-hub web`` (a child process, its whole
output captured): accounts made with the documented commands, then every identity read
the API and the dashboard offer, exports included, over HTTP with a token or a session
cookie. Afterwards the server's output is searched for every ID number and name it
answered with and every reason typed; each URL asked for and each link or form target
on the dashboard's pages is searched too. Answers with identities must not be cached.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from doorscan.localbroker import free_port
from hub.access import AccessControlledStore, AuditQuery, Role
from tests.access_data import FULL_IDS, FULL_NAMES, MARKET, SINCE, UNTIL, A, principal
from tests.hubstore import open_store
from tests.test_api import fill_registry_and_visits
from tests.test_auth import _child, _stop, _wait_for_line

PASSWORD = "a long passphrase for the tracer"
REASONS = ("ca F0 số 12 Nguyễn Văn Bình 064090111111", "danh sách khách chợ đợt 3")


def _cli(*args: str) -> str:
    command = str(Path(sys.executable).with_name("doorscan-hub"))  # the venv's entry point
    done = subprocess.run([command, *args], capture_output=True, text=True, check=True, timeout=120)
    return done.stdout


@pytest.fixture
def hub_web(hub_db: str, tmp_path: Path) -> tuple[str, int, Path]:
    with open_store(hub_db) as store:
        fill_registry_and_visits(store)
    secret = tmp_path / "pw.txt"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    for user_id in ("tracer-a", "tracer-b"):
        _cli("user", "add", "--db", hub_db, "--id", user_id, "--name", user_id,
             "--role", "tracer", "--password-file", str(secret))  # fmt: skip
    return hub_db, free_port(), tmp_path / "web.log"


def test_a_session_of_reads_leaves_no_identifier_in_logs_or_urls(
    hub_web: tuple[str, int, Path],
) -> None:
    db, port, log = hub_web
    base = f"http://127.0.0.1:{port}"
    proc = _child(["web", "--db", db, "--http", f"127.0.0.1:{port}", "--log-level", "DEBUG"], log)
    urls: list[str] = []
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    try:
        _wait_for_line(log, "hub web ready", proc)
        api = httpx.Client(base_url=base, timeout=60)
        api.event_hooks["request"] = [lambda r: urls.append(str(r.url))]
        token = api.post(
            "/api/v1/login", json={"user_id": "tracer-a", "password": PASSWORD}
        ).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        period = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
        trace = api.post(
            "/api/v1/trace", json={"id": A.id_number, **period, "reason": REASONS[0]}, headers=auth
        )
        assert trace.status_code == 200
        assert trace.headers["cache-control"] == "no-store"
        assert trace.headers["x-content-type-options"] == "nosniff"
        body = trace.json()
        seen_ids |= {body["index"]["id_number"], *(c["id_number"] for c in body["contacts"])}
        seen_names |= {body["index"]["name"], *(c["name"] for c in body["contacts"])}
        listing = api.post(
            f"/api/v1/venues/{MARKET}/visitors", json={**period, "reason": REASONS[1]}, headers=auth
        ).json()
        seen_ids |= {v["id_number"] for v in listing["visitors"]}
        seen_names |= {v["name"] for v in listing["visitors"]}
        timeline = api.post(
            "/api/v1/people/timeline", json={"id": A.id_number, **period, "reason": REASONS[0]},
            headers=auth,
        )  # fmt: skip
        assert timeline.status_code == 200 and timeline.headers["cache-control"] == "no-store"
        search = api.post(
            "/api/v1/people/search", json={"name": A.name, "reason": REASONS[0]}, headers=auth
        ).json()
        assert [m["id_number"] for m in search["matches"]] == [A.id_number]
        for fmt in ("csv", "xlsx"):
            export = api.post(
                f"/api/v1/exports/trace.{fmt}",
                json={"id": A.id_number, **period, "reason": REASONS[0]},
                headers=auth,
            )
            assert export.status_code == 200 and export.headers["cache-control"] == "no-store"
        # The dashboard, as a browser would: a session cookie, forms posted.
        web = httpx.Client(base_url=base, timeout=60, follow_redirects=False)
        web.event_hooks["request"] = [lambda r: urls.append(str(r.url))]
        form_login = {"user_id": "tracer-b", "password": PASSWORD, "next": "/trace"}
        assert web.post("/login", data=form_login).status_code == 303
        fields = {
            "subject": A.id_number,
            "reason": REASONS[0],
            "since": SINCE.date().isoformat(),
            "until": UNTIL.date().isoformat(),
            "window_minutes": "60",
            "depth": "2",
        }
        page = web.post("/trace", data=fields)
        assert page.status_code == 200 and A.id_number in page.text
        targets = re.findall(r'(?:href|action|src)="([^"]*)"', page.text)
        assert targets, "the page links and posts somewhere"
        by_name = web.post("/trace", data={**fields, "subject": A.name})
        assert by_name.status_code == 200
        download = web.post("/trace/export", data={**fields, "format": "xlsx"})
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("application/vnd.openxml")
    finally:
        output = _stop(proc, log)
    assert len(urls) >= 10
    secrets = (seen_ids | seen_names | set(REASONS) | FULL_IDS | FULL_NAMES) - {""}
    assert A.id_number in secrets and A.name in secrets
    assert "POST /api/v1/trace 200" in output  # the hub does log its requests...
    for secret in secrets:  # ...and none of what they carried
        assert secret not in output, f"{secret!r} in the server's output"
        for url in [*urls, *targets]:
            assert secret not in url, f"{secret!r} in {url}"
    # The two tracers' reads are told apart in the audit, with the channel and address.
    with open_store(db) as store:
        reader = AccessControlledStore(store, principal(Role.ADMIN))
        at = datetime.now(UTC)
        api_reads = reader.audit_log(100, at, AuditQuery(account="tracer-a")).entries
        web_reads = reader.audit_log(100, at, AuditQuery(account="tracer-b")).entries
    assert {e.action for e in api_reads} >= {
        "login", "trace", "visitors", "timeline", "find_people", "export_trace",
    }  # fmt: skip
    assert {e.params["principal"]["channel"] for e in api_reads if "principal" in e.params} == {
        "api"
    }
    assert {e.action for e in web_reads} >= {"login", "trace", "find_people", "export_trace"}
    web_channels = {e.params["principal"]["channel"] for e in web_reads if "principal" in e.params}
    assert web_channels == {"web"}
    assert all(
        e.params["principal"]["address"] == "127.0.0.1"
        for e in web_reads
        if "principal" in e.params
    )
    trace_entry = next(e for e in api_reads if e.action == "trace")
    assert trace_entry.reason == REASONS[0]  # opened for the admin
    assert trace_entry.params["results"] >= 1
