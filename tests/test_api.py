"""The hub's JSON API (`hub.web.api`) for every role: allowed, refused, masked, audited.

A real store on each backend (`hub_db`), real users and tokens (`hub.auth`), the real app through
Starlette's TestClient. The people and visits are those of tests/test_access.py: A at
the market with B, H and U; B then at the hospital with D (A's F2).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from doorscan.wire import VenueRecord
from hub.access import Role
from hub.auth import create_user, hash_token, issue_api_token, login
from hub.store import HubStore, StoredScan
from hub.store.base import StoredToken, StoredUser
from hub.web.app import create_app
from hub.web.deps import SESSION_COOKIE
from tests.access_data import AT as NOW
from tests.access_data import (
    FULL_IDS,
    FULL_NAMES,
    HOSPITAL,
    MARKET,
    SINCE,
    UNTIL,
    VISITS,
    A,
    B,
    D,
    H,
    P,
    U,
)
from tests.hubstore import open_store

PASSWORD = "mật khẩu đủ dài 2021"
ROLES = ("tracer", "venue", "reporter", "admin")
PERIOD = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
REASON = "ca F0 số 12"


@dataclasses.dataclass
class Hub:
    client: TestClient
    store: HubStore
    tokens: dict[str, str]

    def as_(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def get(self, role: str | None, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=self.as_(role))

    def post(self, role: str | None, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(path, json=body, headers=self.as_(role))

    def audit(self) -> list[Any]:
        return self.store.audit_entries()[::-1]  # oldest first


@dataclasses.dataclass(frozen=True)
class Accounts:
    """One user per role and an API token each, as the store keeps them, with the tokens."""

    users: list[StoredUser]
    stored_tokens: list[StoredToken]
    tokens: dict[str, str]


def fill_registry_and_visits(store: HubStore) -> None:
    store.upsert_venue(VenueRecord(venue_id=MARKET, name="Chợ Pleiku", district="Pleiku"))
    store.upsert_venue(VenueRecord(venue_id=HOSPITAL, name="Bệnh viện tỉnh"))
    store.insert_scans(
        [
            StoredScan(f"scan-{n:04d}", None, venue, at, True, who, "csv")
            for n, (who, venue, at) in enumerate(VISITS)
        ],
        received_at=NOW,
    )


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Accounts:
    """The users and tokens, made once through `hub.auth` (scrypt is slow on purpose).

    Each test's store gets the same rows (`hub`), whatever its backend.
    """
    path = tmp_path_factory.mktemp("template") / "hub.db"
    tokens = {}
    with open_store(path) as store:
        fill_registry_and_visits(store)
        for role in ROLES:
            venue = MARKET if role == "venue" else None
            create_user(store, f"u-{role}", f"User {role}", Role(role), venue, PASSWORD, NOW)
            tokens[role] = issue_api_token(store, f"u-{role}", 30, NOW).token
        users = [store.user(f"u-{role}") for role in ROLES]
        stored = [store.token(hash_token(token)) for token in tokens.values()]
    assert not path.with_name("hub.db-wal").exists()  # closed cleanly: one file holds it all
    assert all(users) and all(stored)
    return Accounts(
        [u for u in users if u is not None], [t for t in stored if t is not None], tokens
    )


@pytest.fixture
def hub(hub_db: str, accounts: Accounts) -> Iterator[Hub]:
    with open_store(hub_db) as store:
        fill_registry_and_visits(store)
        for user in accounts.users:
            store.add_user(user)
        for token in accounts.stored_tokens:
            store.add_token(token)
        with TestClient(create_app(store, now=lambda: NOW)) as client:
            yield Hub(client, store, dict(accounts.tokens))


def _visitors_path(venue: str = MARKET) -> str:
    return f"/api/v1/venues/{venue}/visitors"


def _trace_body(**extra: Any) -> dict[str, Any]:
    return {
        "id": A.id_number,
        **PERIOD,
        "window_minutes": 60,
        "depth": 2,
        "reason": REASON,
        **extra,
    }


# Every endpoint of this module, as (method, path, params or body).
ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/logout", {}),
    ("GET", "/api/v1/me", {}),
    ("GET", "/api/v1/venues", {}),
    ("POST", _visitors_path(), {**PERIOD, "reason": REASON}),
    ("POST", "/api/v1/trace", _trace_body()),
    ("POST", "/api/v1/people/timeline", {"id": A.id_number, **PERIOD, "reason": REASON}),
    ("POST", "/api/v1/people/search", {"name": "nguyen thi mai", "reason": REASON}),
    ("GET", "/api/v1/audit", {}),
    ("POST", "/api/v1/exports/trace.csv", {"id": A.id_number, **PERIOD, "reason": REASON}),
    ("POST", "/api/v1/exports/trace.xlsx", {"id": A.id_number, **PERIOD, "reason": REASON}),
]


def _call(hub: Hub, role: str | None, method: str, path: str, data: dict[str, Any]) -> Any:
    return hub.post(role, path, data) if method == "POST" else hub.get(role, path, **data)


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "data"), ENDPOINTS)
def test_no_token_is_401_and_reads_nothing(
    hub: Hub, method: str, path: str, data: dict[str, Any]
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        if method == "POST":
            response = hub.client.post(path, json=data, headers=headers)
        else:
            response = hub.client.get(path, params=data, headers=headers)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.json()["error"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    assert hub.audit() == []


def test_login_me_logout(hub: Hub) -> None:
    assert (
        hub.post(
            None, "/api/v1/login", {"user_id": "u-tracer", "password": "wrong one!"}
        ).status_code
        == 401
    )
    assert (
        hub.post(None, "/api/v1/login", {"user_id": "nobody", "password": PASSWORD}).status_code
        == 401
    )
    response = hub.post(None, "/api/v1/login", {"user_id": "u-venue", "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == {
        "user_id": "u-venue",
        "display_name": "User venue",
        "role": "venue",
        "venue_id": MARKET,
    }
    assert body["expires_at"] == (NOW + timedelta(hours=12)).isoformat().replace("+00:00", "Z")
    token = body["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert hub.client.get("/api/v1/me", headers=headers).json()["role"] == "venue"
    assert hub.client.post("/api/v1/logout", headers=headers).status_code == 204
    assert hub.client.get("/api/v1/me", headers=headers).status_code == 401
    # The other tokens of the same user are not touched by this logout.
    assert hub.get("venue", "/api/v1/me").status_code == 200


def test_session_cookie_authenticates_and_logout_clears_it(hub: Hub) -> None:
    issued = login(hub.store, "u-tracer", PASSWORD, NOW)
    assert issued is not None
    hub.client.cookies.set(SESSION_COOKIE, issued.token)
    try:
        assert hub.client.get("/api/v1/me").json()["user_id"] == "u-tracer"
        response = hub.client.post("/api/v1/logout")
        assert response.status_code == 204
        assert SESSION_COOKIE in response.headers["set-cookie"]
        hub.client.cookies.set(SESSION_COOKIE, issued.token)
        assert hub.client.get("/api/v1/me").status_code == 401  # revoked at the hub
    finally:
        hub.client.cookies.clear()


def test_disabled_user_is_401_at_once(hub: Hub) -> None:
    assert hub.get("tracer", "/api/v1/me").status_code == 200
    hub.store.set_user_active("u-tracer", False)
    assert hub.get("tracer", "/api/v1/me").status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_me(hub: Hub, role: str) -> None:
    assert hub.get(role, "/api/v1/me").json()["role"] == role


# -- venues --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "seen"),
    [
        ("tracer", [HOSPITAL, MARKET]),
        ("venue", [MARKET]),
        ("reporter", [HOSPITAL, MARKET]),
        ("admin", [HOSPITAL, MARKET]),
    ],
)
def test_venues(hub: Hub, role: str, seen: list[str]) -> None:
    response = hub.get(role, "/api/v1/venues")
    assert response.status_code == 200
    assert [v["venue_id"] for v in response.json()] == seen


# -- visitors ------------------------------------------------------------------------------


def test_tracer_sees_visitors_in_full(hub: Hub) -> None:
    response = hub.post("tracer", _visitors_path(), {**PERIOD, "reason": REASON})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["masked"] is False
    assert [(v["id_number"], v["name"]) for v in body["visitors"]] == [
        (A.id_number, A.name),
        (B.id_number, B.name),
        (H.id_number, H.name),
        (U.id_number, U.name),
    ]
    [entry] = hub.audit()
    assert (entry.action, entry.reason) == ("visitors", REASON)
    assert entry.params["principal"] == {
        "role": "tracer",
        "venue_id": None,
        "account": "u-tracer",
        "channel": "api",
        "address": "testclient",
    }


def test_venue_sees_its_own_visitors_masked_without_person_keys(hub: Hub) -> None:
    response = hub.post("venue", _visitors_path(), {**PERIOD, "reason": REASON})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["masked"] is True
    assert [(v["id_number"], v["name"]) for v in body["visitors"]] == [
        (A.id_number[:7] + "*****", A.name.rsplit(" ", 1)[0] + "***"),
        (B.id_number[:7] + "*****", "Rơ Châm***"),
        ("******" + P[2].id_number[6] + "*****", H.name.rsplit(" ", 1)[0] + "***"),
        (U.id_number[:7] + "*****", "NGUYỄN THỊ***"),
    ]
    text = response.text
    assert "person_key" not in text
    assert not any(n in text for n in FULL_NAMES) and not any(i in text for i in FULL_IDS)
    [entry] = hub.audit()
    assert entry.action == "visitors" and entry.params["masked"] is True
    assert entry.params["principal"] == {
        "role": "venue",
        "venue_id": MARKET,
        "account": "u-venue",
        "channel": "api",
        "address": "testclient",
    }


@pytest.mark.parametrize(
    ("role", "venue"),
    [("venue", HOSPITAL), ("venue", "khong-co"), ("reporter", MARKET), ("admin", MARKET)],
)
def test_visitors_refused_and_audited(hub: Hub, role: str, venue: str) -> None:
    response = hub.post(role, _visitors_path(venue), {**PERIOD, "reason": REASON})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"
    assert not any(n in response.text for n in FULL_NAMES)
    [entry] = hub.audit()
    assert entry.action == "refused" and entry.params["attempted"] == "visitors"
    assert entry.params["principal"]["role"] == role


def test_visitors_bad_input(hub: Hub) -> None:
    no_reason = hub.post("tracer", _visitors_path(), {**PERIOD})
    assert no_reason.status_code == 422 and no_reason.json()["error"] == "bad_request"
    blank = hub.post("tracer", _visitors_path(), {**PERIOD, "reason": "   "})
    assert blank.status_code == 400 and blank.json()["error"] == "no_reason"
    unknown = hub.post("tracer", _visitors_path("khong-co"), {**PERIOD, "reason": REASON})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_venue"
    backwards = hub.post(
        "tracer",
        _visitors_path(),
        {"since": UNTIL.isoformat(), "until": SINCE.isoformat(), "reason": "x"},
    )
    assert backwards.status_code == 400 and backwards.json()["error"] == "empty_period"
    naive = hub.post(
        "tracer",
        _visitors_path(),
        {"since": "2021-08-15T00:00", "until": "2021-08-16T00:00", "reason": "x"},
    )
    assert naive.status_code == 422
    ancient = hub.post(
        "tracer",
        _visitors_path(),
        {"since": "0001-01-01T00:00+07:00", "until": UNTIL.isoformat(), "reason": "x"},
    )
    assert ancient.status_code == 400 and ancient.json()["error"] == "bad_time"
    assert hub.audit() == []  # refused as malformed: nothing read, nothing audited


# -- trace ---------------------------------------------------------------------------------


def test_tracer_traces(hub: Hub) -> None:
    response = hub.post("tracer", "/api/v1/trace", _trace_body())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index"]["id_number"] == A.id_number and body["index"]["name"] == A.name
    assert body["index"]["visits"][0]["venue_name"] == "Chợ Pleiku"
    assert [(c["degree"], c["id_number"], c["venue_name"]) for c in body["contacts"]] == [
        (1, B.id_number, "Chợ Pleiku"),
        (1, H.id_number, "Chợ Pleiku"),
        (1, U.id_number, "Chợ Pleiku"),
        (2, D.id_number, "Bệnh viện tỉnh"),
    ]
    assert body["contacts"][-1]["via"] == B.id_number
    [entry] = hub.audit()
    assert entry.action == "trace" and entry.reason == REASON
    assert entry.params["subject"] == hub.store.pseudonym(A.person_key)
    assert A.id_number not in json.dumps(entry.params)


def test_a_trace_is_counted_in_full_and_named_page_by_page(hub: Hub) -> None:
    whole = hub.post("tracer", "/api/v1/trace", _trace_body()).json()
    pages = [
        hub.post("tracer", "/api/v1/trace", _trace_body(page=n, page_size=3)).json()
        for n in (1, 2, 3)
    ]
    assert [len(p["contacts"]) for p in pages] == [3, 1, 0]
    assert [c for p in pages for c in p["contacts"]] == whole["contacts"]
    for answer in [whole, *pages]:
        assert answer["total"] == 4
        assert answer["summary"]["by_degree"] == {"1": 3, "2": 1}
        by_venue = {
            (v["degree"], v["venue_name"], v["people"]) for v in answer["summary"]["by_venue"]
        }
        assert by_venue == {(1, "Chợ Pleiku", 3), (2, "Bệnh viện tỉnh", 1)}
        assert sum(h["people"] for h in answer["summary"]["by_hour"]) == 4
    # Every page read is audited with its page, and names only that page's people.
    entries = hub.audit()
    assert [(e.params.get("page"), e.params["results"]) for e in entries] == [
        (1, 4),
        (1, 3),
        (2, 1),
        (3, 0),
    ]
    assert {e.params["page_size"] for e in entries} == {100, 3}
    assert hub.post("tracer", "/api/v1/trace", _trace_body(page=0)).status_code == 422
    assert hub.post("tracer", "/api/v1/trace", _trace_body(page_size=1001)).status_code == 422


@pytest.mark.parametrize("role", ["venue", "reporter", "admin"])
def test_trace_refused_for_other_roles(hub: Hub, role: str) -> None:
    response = hub.post(role, "/api/v1/trace", _trace_body())
    assert response.status_code == 403, response.text
    assert not any(n in response.text for n in FULL_NAMES)
    [entry] = hub.audit()
    assert (entry.action, entry.params["attempted"]) == ("refused", "trace")
    assert entry.params["subject"] == hub.store.pseudonym(A.person_key)


def test_trace_bad_input(hub: Hub) -> None:
    body = _trace_body()
    del body["reason"]
    assert hub.post("tracer", "/api/v1/trace", body).status_code == 422
    assert (
        hub.post("tracer", "/api/v1/trace", _trace_body(reason=" ")).json()["error"] == "no_reason"
    )
    assert hub.post("tracer", "/api/v1/trace", _trace_body(id="hello?")).json()["error"] == "bad_id"
    assert hub.post("tracer", "/api/v1/trace", _trace_body(depth=7)).status_code == 422
    assert hub.post("tracer", "/api/v1/trace", _trace_body(window_minutes=-1)).status_code == 422
    assert hub.post("tracer", "/api/v1/trace", _trace_body(extra=1)).status_code == 422
    assert hub.audit() == []


# -- timeline and search -------------------------------------------------------------------


def test_tracer_reads_a_timeline(hub: Hub) -> None:
    response = hub.post(
        "tracer", "/api/v1/people/timeline", {"id": B.id_number, **PERIOD, "reason": REASON}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id_number"], body["name"]) == (B.id_number, B.name)
    assert [(v["venue_id"], v["venue_name"]) for v in body["visits"]] == [
        (MARKET, "Chợ Pleiku"),
        (HOSPITAL, "Bệnh viện tỉnh"),
    ]
    [entry] = hub.audit()
    assert entry.action == "timeline" and entry.params["subject"] == hub.store.pseudonym(
        B.person_key
    )
    assert B.id_number not in json.dumps(entry.params)


@pytest.mark.parametrize("role", ["venue", "reporter", "admin"])
def test_timeline_refused_for_other_roles(hub: Hub, role: str) -> None:
    response = hub.post(
        role, "/api/v1/people/timeline", {"id": B.id_number, **PERIOD, "reason": REASON}
    )
    assert response.status_code == 403
    assert B.name not in response.text
    [entry] = hub.audit()
    assert (entry.action, entry.params["attempted"]) == ("refused", "timeline")


def test_tracer_searches_by_name_without_diacritics(hub: Hub) -> None:
    response = hub.post(
        "tracer", "/api/v1/people/search", {"name": "nguyen thi mai", "reason": REASON}
    )
    assert response.status_code == 200, response.text
    assert response.json()["matches"] == [
        {"person_key": U.person_key, "id_number": U.id_number, "name": "NGUYỄN THỊ MAI"}
    ]
    nobody = hub.post(
        "tracer", "/api/v1/people/search", {"name": "tran van khong", "reason": REASON}
    )
    assert nobody.json()["matches"] == []  # the control: a name nobody has finds nobody
    entries = hub.audit()
    assert [e.action for e in entries] == ["find_people", "find_people"]
    assert entries[0].params["name_subject"] == hub.store.pseudonym("name:nguyen thi mai")
    assert "nguyen" not in json.dumps(entries[0].params).lower()


@pytest.mark.parametrize("role", ["venue", "reporter", "admin"])
def test_search_refused_for_other_roles(hub: Hub, role: str) -> None:
    response = hub.post(role, "/api/v1/people/search", {"name": "Nguyễn Thị Mai", "reason": REASON})
    assert response.status_code == 403
    assert U.id_number not in response.text
    [entry] = hub.audit()
    assert (entry.action, entry.params["attempted"]) == ("refused", "find_people")
    assert "mai" not in json.dumps(entry.params, ensure_ascii=False).lower()


# -- audit ---------------------------------------------------------------------------------


def test_admin_reads_the_audit_log(hub: Hub) -> None:
    hub.post("tracer", "/api/v1/trace", _trace_body())
    response = hub.get("admin", "/api/v1/audit", limit=10)
    assert response.status_code == 200, response.text
    body = response.json()
    # The read of the log is itself recorded, after the entries it returned.
    assert body["verification"]["ok"] is True and body["verification"]["entries"] == 2
    assert [e["action"] for e in body["entries"]] == ["trace"]
    assert A.id_number not in response.text and A.name not in response.text
    assert body["entries"][0]["reason"] == REASON  # stored sealed, opened for the admin
    again = hub.get("admin", "/api/v1/audit", limit=10, account="u-admin").json()
    assert [e["action"] for e in again["entries"]] == ["audit_log"]
    assert again["entries"][0]["params"]["principal"]["account"] == "u-admin"


@pytest.mark.parametrize("role", ["tracer", "venue", "reporter"])
def test_audit_log_refused_for_other_roles(hub: Hub, role: str) -> None:
    response = hub.get(role, "/api/v1/audit")
    assert response.status_code == 403
    [entry] = hub.audit()
    assert (entry.action, entry.params["attempted"]) == ("refused", "audit_log")


# -- exports -------------------------------------------------------------------------------


def test_tracer_exports_the_trace(hub: Hub) -> None:
    params = {"id": A.id_number, **PERIOD, "reason": REASON}
    csv_response = hub.post("tracer", "/api/v1/exports/trace.csv", params)
    assert csv_response.status_code == 200, csv_response.text
    assert csv_response.headers["content-disposition"] == 'attachment; filename="trace.csv"'
    text = csv_response.content.decode("utf-8-sig")
    lines = text.splitlines()
    assert lines[0] == "degree,id_number,name,venue_id,venue,time (UTC+7),via"
    assert lines[1].startswith(f"0,{A.id_number},{A.name},{MARKET},Chợ Pleiku,2021-08-15T10:00:00")
    assert len(lines) == 1 + 1 + 4  # header, A's one visit, four contacts
    xlsx = hub.post("tracer", "/api/v1/exports/trace.xlsx", params)
    assert xlsx.status_code == 200
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][0] == "degree" and rows[-1][1] == D.id_number and len(rows) == 6
    assert [e.action for e in hub.audit()] == ["export_trace", "export_trace"]


def test_an_export_streams_its_contacts_named_a_batch_per_snapshot(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"id": A.id_number, **PERIOD, "reason": REASON}
    whole = hub.post("tracer", "/api/v1/exports/trace.csv", params).content
    snapshots = []
    trace_reader = hub.store.trace_reader

    def counted() -> Any:
        snapshots.append(1)
        return trace_reader()

    monkeypatch.setattr(hub.store, "trace_reader", counted)
    monkeypatch.setattr("hub.trace.EXPORT_BATCH", 1)
    streamed = hub.post("tracer", "/api/v1/exports/trace.csv", params)
    assert streamed.status_code == 200 and streamed.headers.get("content-length") is None
    assert streamed.content == whole  # the same file, one BOM, one header
    assert len(snapshots) == 1 + 4  # the walk, then each of the four contacts on its own
    entries = hub.audit()
    assert [(e.action, e.params["results"]) for e in entries] == [("export_trace", 4)] * 2


@pytest.mark.parametrize("role", ["venue", "reporter", "admin"])
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_exports_refused_for_other_roles(hub: Hub, role: str, fmt: str) -> None:
    params = {"id": A.id_number, **PERIOD, "reason": REASON}
    response = hub.post(role, f"/api/v1/exports/trace.{fmt}", params)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    [entry] = hub.audit()
    assert entry.action == "refused"


def test_openapi_document(hub: Hub) -> None:
    doc = hub.client.get("/openapi.json").json()
    assert doc["info"]["title"] == "doorscan hub"
    assert {"/api/v1/trace", "/api/v1/audit", "/api/v1/people/search"} <= set(doc["paths"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_a_trace_is_timed_in_the_metrics(hub: Hub) -> None:
    from hub.web.metrics import HubMetrics

    metrics = HubMetrics()
    with TestClient(create_app(hub.store, now=lambda: NOW, metrics=metrics)) as client:
        headers = {"Authorization": f"Bearer {hub.tokens['tracer']}"}
        assert "doorscan_trace_seconds_count 0.0" in metrics.render().decode()
        assert client.post("/api/v1/trace", json=_trace_body(), headers=headers).status_code == 200
        refused = client.post(
            "/api/v1/trace", json=_trace_body(), headers={"Authorization": "Bearer x"}
        )
        assert refused.status_code == 401
    assert "doorscan_trace_seconds_count 1.0" in metrics.render().decode()


# -- cross-site requests ---------------------------------------------------------------------


def test_a_cookie_post_from_another_site_is_refused_before_anything_runs(hub: Hub) -> None:
    """A page elsewhere cannot make a logged-in browser trace: the API checks Origin too."""
    login = hub.post(None, "/api/v1/login", {"user_id": "u-tracer", "password": PASSWORD})
    assert login.status_code == 200
    session = {"doorscan_session": login.json()["token"]}
    hub.client.cookies.update(session)
    before = len(hub.audit())
    for header in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}):
        response = hub.client.post("/api/v1/trace", json=_trace_body(), headers=header)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "bad_origin"
    assert len(hub.audit()) == before  # nothing ran, nothing was read
    # Control: the same request from the hub's own origin goes through.
    own = hub.client.post(
        "/api/v1/trace", json=_trace_body(), headers={"Origin": "http://testserver"}
    )
    assert own.status_code == 200, own.text
