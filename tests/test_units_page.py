"""The units page shows each unit's health figures and its remote config (real app, real store)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape

import pytest
from fastapi.testclient import TestClient

from doorscan.wire import (
    UnitRecord,
    UnitStatus,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_status,
)
from hub.access import Role
from hub.auth import create_user
from hub.ingest import Ingestor
from hub.store import HubStore
from hub.web.app import create_app
from tests.hubstore import open_store

NOW = datetime(2022, 1, 10, 3, 0, tzinfo=UTC)
PASSWORD = "một mật khẩu đủ dài"
HTML_ERROR = "version 5 refused: <b>colour</b>: Extra inputs are not permitted"
STATUSES = [
    UnitStatus(
        unit_id="door-cho", online=True, at=NOW, software="1.5.0", backlog=0,
        clock_trusted=True, cpu_temp_c=52.6, disk_free_mb=11520, camera_ok=True,
        decode_rate_hz=14.8, config_version=4, config_error=HTML_ERROR,
    ),
    UnitStatus(
        unit_id="door-bv", online=True, at=NOW, software="1.5.0", camera_ok=False,
        decode_rate_hz=0.0, config_version=2, backlog=3, quarantined=2,
    ),
]  # fmt: skip


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        ingestor = Ingestor(opened, now=lambda: NOW)
        for venue_id, unit_id in (("cho-pleiku", "door-cho"), ("bv-pleiku", "door-bv")):
            venue = VenueRecord(venue_id=venue_id, name=venue_id)
            ingestor.handle(topic_registry_venue(venue_id), encode_message(venue))
            unit = UnitRecord(unit_id=unit_id, venue_id=venue_id)
            ingestor.handle(topic_registry_unit(unit_id), encode_message(unit))
        for status in STATUSES:
            ingestor.handle(topic_status(status.unit_id), encode_message(status))
        create_user(opened, "admin", "Quản trị", Role.ADMIN, None, PASSWORD, NOW)
        create_user(opened, "cho", "Chợ", Role.VENUE, "cho-pleiku", PASSWORD, NOW)
        yield opened


def _units_page(store: HubStore, user_id: str) -> dict[str, list[str]]:
    """Each unit's row on the English page, as the cells' visible text."""
    with TestClient(create_app(store, now=lambda: NOW), follow_redirects=False) as client:
        login = client.post("/login", data={"user_id": user_id, "password": PASSWORD})
        assert login.status_code == 303
        page = client.get("/units?lang=en")
    assert page.status_code == 200
    assert "<b>colour</b>" not in page.text  # a unit's text is escaped, never markup
    rows: dict[str, list[str]] = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page.text, re.S):
        cells = [
            " ".join(unescape(re.sub(r"<[^>]+>", " ", c)).split())
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        if cells:
            rows[cells[0]] = cells
    return rows


def test_the_units_page_shows_health_figures_and_the_applied_config(store: HubStore) -> None:
    rows = _units_page(store, "admin")
    assert set(rows) == {"door-cho", "door-bv"}
    cho, bv = rows["door-cho"], rows["door-bv"]
    # ... version, camera, CPU temperature, disk free, frames/s, config
    refused = f"4 Config refused: {unescape(HTML_ERROR)}"
    assert cho[7:] == ["1.5.0", "Yes", "52.6 °C", "11520 MB", "14.8", refused]
    assert bv[7:] == ["1.5.0", "No", "—", "—", "0.0", "2"]
    # Scans the hub refused for good, kept on the unit, show beside its backlog.
    assert (cho[5], bv[5]) == ("0", "3 Refused, kept on the unit: 2")


def test_a_venue_owner_sees_the_figures_of_its_own_units_only(store: HubStore) -> None:
    rows = _units_page(store, "cho")
    assert set(rows) == {"door-cho"}
    assert rows["door-cho"][-1].startswith("4 Config refused")


def test_a_unit_told_to_run_another_release_shows_it_beside_the_one_it_runs(
    store: HubStore,
) -> None:
    # As `hub fleet-update` records them: door-cho told 1.6.0, door-bv told what it runs.
    store.record_unit_config("door-cho", 5, {"software": "1.6.0", "debounce_s": 90}, NOW)
    store.record_unit_config("door-bv", 3, {"software": "1.5.0"}, NOW)
    rows = _units_page(store, "admin")
    assert rows["door-cho"][7] == "1.5.0 → 1.6.0"
    assert rows["door-bv"][7] == "1.5.0"  # running what it was told: nothing to show


@pytest.mark.parametrize(
    ("state", "error", "shown"),
    [
        ("staged", None, "1.5.0 → 1.6.0 1.6.0: installed, switching at a quiet moment"),
        (
            "rolled_back",
            "self-test failed: disk: 12 MB free",
            "1.5.0 → 1.6.0 1.6.0: rolled back (self-test failed: disk: 12 MB free)",
        ),
    ],
)
def test_how_far_a_units_update_got_shows_with_its_reason(
    store: HubStore, state: str, error: str | None, shown: str
) -> None:
    """The unit's own word (its status, wire revision 10), read as the hub stores it."""
    store.record_unit_config("door-cho", 5, {"software": "1.6.0"}, NOW)
    status = STATUSES[0].model_copy(
        update={"update_version": "1.6.0", "update_state": state, "update_error": error}
    )
    Ingestor(store, now=lambda: NOW).handle(topic_status("door-cho"), encode_message(status))
    assert _units_page(store, "admin")["door-cho"][7] == shown
