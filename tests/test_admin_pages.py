"""The operators' pages over HTTP: users and tokens, the audit log, a venue's visitors.

Through the real app and a real store of each backend, as a browser posts its forms; the
same fixtures as tests/test_pages.py (users made once: scrypt is slow by design).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text
from hub.auth import authenticate, issue_api_token
from hub.store import Hold, HubStore, StoredScan
from hub.web.app import create_app
from tests.test_pages import INDEX, NOW, PASSWORD, log_in, store, text_of, users

ORIGIN = {"Origin": "http://testserver"}
__all__ = ["store", "users"]  # fixtures shared with tests/test_pages.py
NEW_PASSWORD = "một mật khẩu mới đủ dài"


@pytest.fixture
def client(store: HubStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, now=lambda: NOW), follow_redirects=False) as test_client:
        yield test_client


def _post(client: TestClient, path: str, **form: str) -> str:
    response = client.post(path, data=form, headers=ORIGIN)
    assert response.status_code == 200, text_of(response.text)
    return text_of(response.text)


def test_only_an_admin_sees_the_users_and_audit_pages(client: TestClient) -> None:
    for role in ("tracer", "venue", "reporter"):
        client.cookies.clear()
        log_in(client, role)
        for page in ("/users", "/audit", "/audit.csv"):
            assert client.get(page).status_code == 403, (role, page)
        assert client.post("/users/add", data={}, headers=ORIGIN).status_code == 403
    client.cookies.clear()
    log_in(client, "admin")
    page = client.get("/users?lang=en")
    assert page.status_code == 200
    assert all(f'id="user-{u}"' in page.text for u in ("tracer", "venue", "reporter", "admin"))
    assert "password_hash" not in page.text and "scrypt$" not in page.text


def test_an_admin_adds_disables_resets_and_changes_a_user_and_each_change_is_audited(
    client: TestClient, store: HubStore
) -> None:
    log_in(client, "admin")
    text = _post(
        client,
        "/users/add?lang=en",
        user_id="ytepleiku2",
        display_name="Y tế Pleiku 2",
        role="tracer",
        venue_id="",
        password=PASSWORD,
    )
    assert "User ytepleiku2 added." in text
    token = issue_api_token(store, "ytepleiku2", 30, NOW).token
    assert authenticate(store, token, NOW) is not None
    assert "state changed" in _post(client, "/users/ytepleiku2/active?lang=en", active="no")
    assert authenticate(store, token, NOW) is None  # disabled: every token stops at once
    _post(client, "/users/ytepleiku2/active", active="yes")
    _post(client, "/users/ytepleiku2/password", password=NEW_PASSWORD)
    _post(client, "/users/ytepleiku2/role", role="venue", venue_id="cho-pleiku")
    changed = store.user("ytepleiku2")
    assert changed is not None and (changed.role, changed.venue_id) == ("venue", "cho-pleiku")
    # The token is listed by its hash, and revoked from the page.
    page = client.get("/users").text
    row = re.search(r'<tr id="user-ytepleiku2".*?</tr>', page, re.S)
    assert row is not None
    [token_hash] = re.findall(r'name="token_hash" value="([0-9a-f]{64})"', row.group(0))
    _post(client, "/users/ytepleiku2/revoke-token", token_hash=token_hash)
    assert authenticate(store, token, NOW) is None
    # A bad request says why and changes nothing.
    refused = client.post(
        "/users/ytepleiku2/password?lang=en", data={"password": "short"}, headers=ORIGIN
    )
    assert refused.status_code == 400 and "at least 12 characters" in text_of(refused.text)
    entries = [e for e in store.audit_entries(100) if e.params.get("account") == "ytepleiku2"]
    actions = [e.action for e in reversed(entries)]
    assert actions == [
        "user_add",
        "token_create",
        "user_change",
        "user_change",
        "user_change",
        "user_change",
        "token_revoke",
    ]
    by_admin = [e for e in entries if e.action != "token_create"]
    assert all(e.params["principal"]["account"] == "admin" for e in by_admin)
    assert all(e.params["principal"]["channel"] == "web" for e in by_admin)


def test_a_locked_user_is_shown_and_an_admin_unlocks_them(client: TestClient) -> None:
    wrong = {"user_id": "tracer", "password": "not the password"}
    for _ in range(5):
        assert client.post("/login", data=wrong, headers=ORIGIN).status_code == 401
    assert client.post("/login", data={**wrong, "password": PASSWORD}).status_code == 429
    log_in(client, "admin")
    page = client.get("/users?lang=en").text
    assert 'id="unlock-tracer"' in page
    assert "can log in again" in _post(client, "/users/tracer/unlock?lang=en")
    client.cookies.clear()
    log_in(client, "tracer")


def test_the_audit_page_filters_by_account_and_exports_what_it_shows(
    client: TestClient, store: HubStore
) -> None:
    log_in(client, "tracer")
    fields = {"reason": "ca bệnh số 12", "since": "01/01/2022", "until": "10/01/2022"}
    trace = {**fields, "subject": INDEX.id_number, "window_minutes": "60", "depth": "2"}
    assert client.post("/trace", data=trace, headers=ORIGIN).status_code == 200
    client.cookies.clear()
    log_in(client, "admin")
    page = client.get("/audit?lang=en&account=tracer")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "The log is intact" in text
    assert "trace" in text and "ca bệnh số 12" in text  # the reason, opened for the admin
    assert INDEX.id_number not in page.text and INDEX.name not in text
    rows = re.findall(r"<tr>\s*<td class=\"num\">", page.text)
    assert rows and all(
        "tracer" in row for row in re.findall(r"<tr>\s*<td class=\"num\">.*?</tr>", page.text, re.S)
    )
    only_logins = client.get("/audit?account=tracer&action=login").text
    assert "ca bệnh số 12" not in only_logins
    export = client.get("/audit.csv?account=tracer&action=trace")
    assert export.status_code == 200 and export.headers["cache-control"] == "no-store"
    [row] = list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert (row["account"], row["channel"], row["action"]) == ("tracer", "web", "trace")
    assert row["reason"] == "ca bệnh số 12"
    bad = client.get("/audit?since=2022-13-45")
    assert bad.status_code == 400


def test_the_visitors_page_lists_in_full_for_a_tracer_and_masked_for_the_owner(
    client: TestClient, store: HubStore
) -> None:
    form = {"venue_id": "cho-pleiku", "since": "08/01/2022", "until": "08/01/2022"}
    log_in(client, "tracer")
    assert client.get("/visitors").status_code == 200
    full = client.post("/visitors", data={**form, "reason": "kiểm tra"}, headers=ORIGIN)
    assert full.status_code == 200 and INDEX.name in text_of(full.text)
    assert INDEX.id_number in full.text
    no_reason = client.post("/visitors?lang=en", data={**form, "reason": " "}, headers=ORIGIN)
    assert no_reason.status_code == 400 and "give the reason" in text_of(no_reason.text)
    client.cookies.clear()
    log_in(client, "venue")
    masked = client.post("/visitors", data={**form, "reason": "kiểm tra"}, headers=ORIGIN)
    assert masked.status_code == 200
    assert INDEX.id_number not in masked.text and INDEX.id_number[:7] in masked.text
    other = client.post(
        "/visitors", data={**form, "venue_id": "bv-pleiku", "reason": "dò"}, headers=ORIGIN
    )
    assert other.status_code == 403
    entries = store.audit_entries(3)
    assert [e.action for e in entries][:2] == ["refused", "visitors"]
    assert (
        entries[1].params["masked"] is True and entries[1].params["principal"]["account"] == "venue"
    )
    client.cookies.clear()
    log_in(client, "reporter")
    assert client.get("/visitors").status_code == 403


def test_an_admin_releases_held_scans_with_a_reason_and_sees_refused_messages_without_payloads(
    client: TestClient, store: HubStore
) -> None:
    who = parse_qr(cccd_text(INDEX))
    store.insert_scans(
        [
            StoredScan(
                f"held-{n:04d}",
                None,
                "cho-pleiku",
                NOW - timedelta(minutes=n),
                True,
                who,
                "csv",
                hold=Hold("too_fast", "more scans in a minute than a door lets through"),
            )
            for n in range(2)
        ],
        received_at=NOW,
    )
    store.add_dead_letter(
        "mqtt", "doorscan/v1/units/door-cho/scans", cccd_text(INDEX).encode(), "schema", "bad", NOW
    )
    log_in(client, "tracer")
    assert client.get("/held").status_code == 403
    client.cookies.clear()
    log_in(client, "admin")
    page = client.get("/held?lang=en")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "too_fast" in text and "Chợ Pleiku" in text and "schema" in text
    assert INDEX.name not in text and INDEX.id_number not in text  # never who, never a payload
    assert f"{len(cccd_text(INDEX).encode())}" in text  # the payload's size only
    no_reason = client.post(
        "/held/release?lang=en", data={"scan_id": "held-0000", "reason": " "}, headers=ORIGIN
    )
    assert no_reason.status_code == 400 and store.counts()["held"] == 2
    done = _post(client, "/held/release?lang=en", scan_id="held-0000", reason="checked by phone")
    assert "1 scans released" in done
    assert store.counts()["held"] == 1
    [entry] = [e for e in store.audit_entries(20) if e.action == "release_held"]
    assert entry.reason == "checked by phone" and entry.params["released"] == ["held-0000"]
    assert entry.params["principal"]["account"] == "admin"
    listed = [e for e in store.audit_entries(20) if e.action == "dead_letters"]
    assert listed and listed[0].params["principal"]["channel"] == "web"
