"""Usage reports, unit health and name search on a real store fed by the real Ingestor.

Every scan and status here goes through `hub.ingest.Ingestor.handle` as the MQTT
service would hand it over, so the tests see what ingest really stores.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from doorscan.errors import Refusal
from doorscan.synthetic import Person, cccd_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import (
    Scan,
    ScanBatch,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
    topic_status,
)
from hub import reports
from hub.access import AccessControlledStore, Forbidden, Principal, Role
from hub.ingest import Ingestor
from hub.namefold import fold
from hub.store import HubStore, SqliteStore
from hub.store.sqlite_schema import seal_identity
from tests.access_data import principal
from tests.hubdb import raw_sql
from tests.hubstore import TEST_VAULT, open_store

NOW = datetime(2026, 3, 20, 5, 0, tzinfo=UTC)
# Venue -> district; two venues share a district. Unit door-<venue> belongs to each venue.
VENUES = {
    "cho-pleiku": "Thành phố Pleiku",
    "benh-vien": "Thành phố Pleiku",
    "uy-ban-iagrai": "Huyện Ia Grai",
}
REPORTER = principal(Role.REPORTER)
OWNER = principal(Role.VENUE, "cho-pleiku")


# The reports as every caller reads them: through the access layer, which scopes them.
def usage_per_day(
    store: HubStore,
    who: Principal,
    since: date,
    until: date,
    by: Literal["venue", "district"],
    *,
    venue_id: str | None = None,
) -> list[reports.UsageRow]:
    return AccessControlledStore(store, who).usage(since, until, by, NOW, venue_id=venue_id)


def quiet_venues(
    store: HubStore, who: Principal, days: int, now: datetime
) -> list[reports.QuietVenue]:
    return AccessControlledStore(store, who).quiet_venues(days, now)


def units_overview(
    store: HubStore, who: Principal, now: datetime, silent_after: timedelta = reports.DEFAULT_SILENT
) -> list[reports.UnitHealth]:
    return AccessControlledStore(store, who).units(now, silent_after)


class Clock:
    """The hub's clock, set by the test (the Ingestor dates receipts with it)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Hub:
    """A store and the ingestor that feeds it, with small helpers to send it messages."""

    def __init__(self, store: HubStore, clock: Clock, ingestor: Ingestor) -> None:
        self.store, self.clock, self.ingestor = store, clock, ingestor
        self._n = 0

    def register(self, venues: dict[str, str] = VENUES) -> None:
        for venue_id, district in venues.items():
            record = VenueRecord(venue_id=venue_id, name=f"Venue {venue_id}", district=district)
            self.ingestor.handle(topic_registry_venue(venue_id), encode_message(record))
            unit = UnitRecord(unit_id=f"door-{venue_id}", venue_id=venue_id)
            self.ingestor.handle(topic_registry_unit(unit.unit_id), encode_message(unit))

    def scan(
        self, venue_id: str, at: datetime, person: Person | None = None, *, trusted: bool = True
    ) -> None:
        """One scan at `venue_id` by its unit, sent as a one-scan batch; it must be stored."""
        self._n += 1
        person = person or make_people(1, seed=self._n)[0]
        unit_id = f"door-{venue_id}"
        scan = Scan(
            scan_id=f"scan-{self._n:06d}",
            venue_id=venue_id,
            scanned_at=at,
            clock_trusted=trusted,
            qr_text=cccd_text(person),
        )
        batch = ScanBatch(
            batch_id=f"batch-{self._n:06d}", unit_id=unit_id, sent_at=at, scans=[scan]
        )
        [reply] = self.ingestor.handle(topic_scans(unit_id), encode_message(batch))
        assert scan.scan_id in json.loads(reply.payload)["stored"]

    def status(self, unit_id: str, online: bool, **fields: object) -> None:
        status = UnitStatus(unit_id=unit_id, online=online, **fields)
        self.ingestor.handle(topic_status(unit_id), encode_message(status))


@pytest.fixture
def hub(hub_db: str) -> Iterator[Hub]:
    clock = Clock(NOW)
    with open_store(hub_db) as store:
        hub = Hub(store, clock, Ingestor(store, now=clock))
        hub.register()
        yield hub


def vn(text: str) -> datetime:
    """A time written in Vietnam time (UTC+7)."""
    return datetime.fromisoformat(text + "+07:00")


# -- usage per day ---------------------------------------------------------------------------


def test_a_day_is_a_vietnam_day_its_midnight_is_17_utc(hub: Hub) -> None:
    hub.scan("cho-pleiku", vn("2026-03-10T23:59:59.999"))  # 16:59:59.999 UTC
    hub.scan("cho-pleiku", vn("2026-03-11T00:00:00"))  # 17:00 UTC, still the 10th in UTC
    hub.scan("cho-pleiku", vn("2026-03-11T06:59:00"))  # 23:59 UTC on the 10th
    rows = usage_per_day(hub.store, REPORTER, date(2026, 3, 10), date(2026, 3, 11), "venue")
    assert [(r.day, r.key, r.scans) for r in rows] == [
        (date(2026, 3, 10), "cho-pleiku", 1),
        (date(2026, 3, 11), "cho-pleiku", 2),
    ]
    # The period's own edges are Vietnam midnights too.
    only_11th = usage_per_day(hub.store, REPORTER, date(2026, 3, 11), date(2026, 3, 11), "venue")
    assert [(r.day, r.scans) for r in only_11th] == [(date(2026, 3, 11), 2)]
    only_10th = usage_per_day(hub.store, REPORTER, date(2026, 3, 10), date(2026, 3, 10), "venue")
    assert [(r.day, r.scans) for r in only_10th] == [(date(2026, 3, 10), 1)]


def test_usage_per_district_adds_the_venues_of_a_district(hub: Hub) -> None:
    day = vn("2026-03-12T09:00")
    for venue_id, count in (("cho-pleiku", 3), ("benh-vien", 2), ("uy-ban-iagrai", 4)):
        for i in range(count):
            hub.scan(venue_id, day + timedelta(minutes=i))
    rows = usage_per_day(hub.store, REPORTER, date(2026, 3, 12), date(2026, 3, 12), "district")
    assert {r.key: r.scans for r in rows} == {"Thành phố Pleiku": 5, "Huyện Ia Grai": 4}
    # The venue role's view: its own venue only, whichever grouping.
    own = usage_per_day(hub.store, OWNER, date(2026, 3, 12), date(2026, 3, 12), "district")
    assert [(r.key, r.scans) for r in own] == [("Thành phố Pleiku", 3)]
    by_venue = usage_per_day(hub.store, OWNER, date(2026, 3, 12), date(2026, 3, 12), "venue")
    assert [(r.key, r.scans) for r in by_venue] == [("cho-pleiku", 3)]


def test_a_venue_owner_asking_for_another_venue_is_refused_and_audited(hub: Hub) -> None:
    hub.scan("benh-vien", vn("2026-03-12T09:00"))
    with pytest.raises(Forbidden, match="own venue only"):
        usage_per_day(
            hub.store, OWNER, date(2026, 3, 1), date(2026, 3, 19), "venue", venue_id="benh-vien"
        )
    entry = hub.store.audit_entries(1)[0]
    assert (entry.action, entry.params["attempted"], entry.params["venue_id"]) == (
        "refused",
        "usage",
        "benh-vien",
    )
    # Every all-venue role may narrow to one venue.
    for role in (Role.ADMIN, Role.REPORTER, Role.TRACER):
        rows = usage_per_day(
            hub.store,
            principal(role),
            date(2026, 3, 1),
            date(2026, 3, 19),
            "venue",
            venue_id="benh-vien",
        )
        assert [(r.key, r.scans) for r in rows] == [("benh-vien", 1)]


def test_an_empty_or_too_long_period_is_refused(hub: Hub) -> None:
    with pytest.raises(Refusal, match="since is after until"):
        usage_per_day(hub.store, REPORTER, date(2026, 3, 2), date(2026, 3, 1), "venue")
    with pytest.raises(Refusal, match="at most 366 days"):
        usage_per_day(hub.store, REPORTER, date(2024, 1, 1), date(2026, 3, 1), "venue")


# -- quiet venues ----------------------------------------------------------------------------


def test_quiet_venues_are_those_without_a_scan_for_n_days_or_ever(hub: Hub) -> None:
    hub.scan("cho-pleiku", NOW - timedelta(days=10))
    hub.scan("benh-vien", NOW - timedelta(days=1))
    quiet = quiet_venues(hub.store, REPORTER, 7, NOW)
    assert [(q.venue_id, q.last_scan) for q in quiet] == [
        ("cho-pleiku", NOW - timedelta(days=10)),
        ("uy-ban-iagrai", None),
    ]
    # Control: with a longer period the 10-day-old scan counts, so only the empty venue stays.
    assert [q.venue_id for q in quiet_venues(hub.store, REPORTER, 11, NOW)] == ["uy-ban-iagrai"]
    assert [q.venue_id for q in quiet_venues(hub.store, OWNER, 7, NOW)] == ["cho-pleiku"]


# -- units -----------------------------------------------------------------------------------


def test_units_online_offline_and_silent(hub: Hub) -> None:
    for unit_id in ("door-blip", "door-spare"):
        hub.store.upsert_unit(UnitRecord(unit_id=unit_id, venue_id="benh-vien"))
    hub.clock.at = NOW - timedelta(hours=5)
    hub.status("door-cho-pleiku", True, software="1.4.0", backlog=3)  # online since long ago
    hub.clock.at = NOW - timedelta(minutes=40)
    hub.status("door-uy-ban-iagrai", True, at=hub.clock.at)  # then no heartbeat for 40 min
    hub.clock.at = NOW - timedelta(minutes=31)
    hub.status("door-benh-vien", False)  # the last will, 31 minutes ago
    hub.clock.at = NOW - timedelta(minutes=10)
    hub.status("door-blip", False)  # gone 10 minutes ago: a blip so far
    hub.clock.at = NOW
    hub.scan("cho-pleiku", NOW - timedelta(minutes=2), trusted=False)
    units = {u.unit_id: u for u in units_overview(hub.store, REPORTER, NOW)}
    assert set(units) == {
        "door-cho-pleiku",
        "door-benh-vien",
        "door-uy-ban-iagrai",
        "door-blip",
        "door-spare",
    }
    pleiku = units["door-cho-pleiku"]  # its scan 2 minutes ago was heard
    assert (pleiku.online, pleiku.silent, pleiku.backlog, pleiku.version) == (
        True,
        False,
        3,
        "1.4.0",
    )
    assert pleiku.clock_trusted is False and pleiku.last_scan == NOW - timedelta(minutes=2)
    assert pleiku.last_seen == NOW - timedelta(hours=5)
    assert (units["door-uy-ban-iagrai"].online, units["door-uy-ban-iagrai"].silent) == (True, True)
    assert (units["door-benh-vien"].online, units["door-benh-vien"].silent) == (False, True)
    assert (units["door-blip"].online, units["door-blip"].silent) == (False, False)
    spare = units["door-spare"]  # registered, never heard from
    assert (spare.online, spare.silent, spare.last_seen, spare.last_scan) == (
        False,
        True,
        None,
        None,
    )
    # The threshold is a parameter: with an hour, the 31- and 40-minute-old ones are not silent.
    longer = {
        u.unit_id: u.silent
        for u in units_overview(hub.store, REPORTER, NOW, silent_after=timedelta(hours=1))
    }
    assert longer == {
        "door-cho-pleiku": False,
        "door-benh-vien": False,
        "door-uy-ban-iagrai": False,
        "door-blip": False,
        "door-spare": True,
    }


def test_the_clock_flag_comes_from_the_status_else_the_newest_scan(hub: Hub) -> None:
    hub.scan("benh-vien", NOW - timedelta(minutes=5))  # a trusted clock then
    hub.scan("cho-pleiku", NOW - timedelta(minutes=5))
    hub.status("door-benh-vien", True, at=NOW, clock_trusted=False)  # NTP lost since
    hub.status("door-cho-pleiku", True, at=NOW)  # an older unit: no clock field
    units = {u.unit_id: u for u in units_overview(hub.store, REPORTER, NOW)}
    assert units["door-benh-vien"].clock_trusted is False
    assert units["door-cho-pleiku"].clock_trusted is True
    assert units["door-uy-ban-iagrai"].clock_trusted is None  # neither status nor scan


def test_a_recent_scan_keeps_an_offline_unit_from_being_silent(hub: Hub) -> None:
    hub.clock.at = NOW - timedelta(hours=2)
    hub.status("door-benh-vien", False)
    hub.clock.at = NOW
    hub.scan("benh-vien", NOW - timedelta(minutes=5))  # sent by the unit back online
    unit = {u.unit_id: u for u in units_overview(hub.store, REPORTER, NOW)}["door-benh-vien"]
    assert (unit.online, unit.silent) == (False, False)


def test_a_unit_that_talks_without_being_registered_is_kept_and_flagged(hub: Hub) -> None:
    hub.status("door-ghost", True, software="0.9.0")
    units = units_overview(hub.store, principal(Role.ADMIN), NOW)
    assert units[0].unit_id == "door-ghost"  # listed first: an operator should look
    assert (units[0].registered, units[0].venue_id, units[0].online) == (False, None, True)
    assert all(u.registered for u in units[1:]) and len(units) == 4
    # A venue owner sees its own units only, so never an unregistered one.
    assert [u.unit_id for u in units_overview(hub.store, OWNER, NOW)] == ["door-cho-pleiku"]


def test_a_bad_status_is_dead_lettered_and_an_empty_one_ignored(hub: Hub) -> None:
    topic = topic_status("door-cho-pleiku")
    good = json.loads(encode_message(UnitStatus(unit_id="door-cho-pleiku", online=True)))
    assert hub.ingestor.handle(topic, json.dumps({**good, "online": "yes"}).encode()) == []
    assert hub.ingestor.handle(topic, json.dumps({**good, "unit_id": "door-other"}).encode()) == []
    assert hub.ingestor.handle(topic, b"") == []  # a cleared retained message
    assert [d.code for d in hub.store.dead_letters()] == ["id_mismatch", "schema"]
    assert hub.store.unit_statuses() == []
    assert hub.ingestor.handle(topic, json.dumps(good).encode()) == []  # control: kept
    assert [s.unit_id for s in hub.store.unit_statuses()] == ["door-cho-pleiku"]


def test_a_retained_status_delivered_again_keeps_the_time_it_first_came(hub: Hub) -> None:
    hub.clock.at = NOW - timedelta(hours=1)
    hub.status("door-benh-vien", False)
    hub.clock.at = NOW  # the hub restarted and the broker handed over the retained copy
    hub.status("door-benh-vien", False)
    assert hub.store.unit_statuses()[0].received_at == NOW - timedelta(hours=1)
    hub.status("door-benh-vien", True, at=NOW)  # control: a new status moves it
    assert hub.store.unit_statuses()[0].received_at == NOW
    assert hub.store.units_online() == 1


# -- name search -----------------------------------------------------------------------------


def _named(name: str, seed: int) -> Person:
    return dataclasses.replace(make_people(1, seed=seed)[0], name=name)


def test_name_search_ignores_diacritics_and_case(hub: Hub) -> None:
    an, anh, an_hat = (
        _named("Nguyễn Văn An", 101),
        _named("Nguyễn Văn Anh", 102),
        _named("Nguyễn Văn Ân", 103),
    )
    for i, person in enumerate((an, an, anh, an_hat)):
        hub.scan("cho-pleiku", NOW - timedelta(hours=i + 1), person)
    for typed in ("nguyen van an", "NGUYEN VAN AN", "  Nguyễn  văn AN "):
        found = hub.store.person_keys_by_name(fold(typed))
        # Diacritics are ignored as the issue asks, so "Ân" is found with "An"; two
        # scans of the same person give one key; "Anh" is another name.
        assert found == sorted([an.person_key, an_hat.person_key]), typed
    assert hub.store.person_keys_by_name(fold("nguyen van anh")) == [anh.person_key]
    assert hub.store.person_keys_by_name(fold("nguyen van")) == []
    assert hub.store.person_keys_by_name("") == []


def test_name_keys_are_kept_apart_from_person_pseudonyms(hub: Hub, hub_db: str) -> None:
    # Both are the vault's keyed hash; the "name:" domain keeps a name key from ever
    # being a person key's pseudonym ("id:..." or "card:..."), whatever the name.
    person = make_people(1, seed=7)[0]
    hub.scan("cho-pleiku", NOW - timedelta(hours=1), person)
    ((name_key, pseudonym),) = raw_sql(hub_db, "SELECT name_key, person_key FROM scans")
    assert name_key == TEST_VAULT.blind("name:" + fold(person.name))
    assert name_key != TEST_VAULT.blind(fold(person.name))
    assert pseudonym == TEST_VAULT.blind(person.person_key) != name_key


class SchemaSixStore(SqliteStore):
    """The store as it was before migration 7: a file it writes is an "older file"."""

    MIGRATIONS = SqliteStore.MIGRATIONS[:6]


def test_migration_7_indexes_the_names_of_an_older_file(tmp_path: Path) -> None:
    # SQLite-only: a file written at schema 6, its user_version and SQLite's query plan.
    db = tmp_path / "old.db"
    an, other = _named("Nguyễn Văn An", 201), _named("Trần Thị Bình", 202)
    with SchemaSixStore(db, vault=TEST_VAULT) as old:
        old.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
    with sqlite3.connect(db) as raw:
        # Rows as schema 6's insert_scans wrote them: sealed identity, pseudonym, no name key.
        for i, person in enumerate((an, other)):
            scan_id = f"old-scan-{i:04d}"
            identity = {
                "person_key": person.person_key,
                "kind": "cccd",
                "id_number": person.id_number,
                "name": person.name,
                "birth_date": None,
                "sex": None,
                "address": None,
            }
            raw.execute(
                "INSERT INTO scans (scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, "
                "person_key, kind, id_number, name, identity, source, received_at_ms) "
                "VALUES (?, NULL, 'cho-pleiku', ?, 1, ?, 'cccd', '', '', ?, 'csv', ?)",
                (
                    scan_id,
                    to_ms(NOW),
                    TEST_VAULT.blind(person.person_key),
                    seal_identity(TEST_VAULT, scan_id, identity),
                    to_ms(NOW),
                ),
            )
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 6
    with open_store(db) as store:
        assert store.person_keys_by_name(fold("NGUYEN VAN AN")) == [an.person_key]
        assert store.person_keys_by_name(fold("tran thi binh")) == [other.person_key]
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(SqliteStore.MIGRATIONS)
        plan = raw.execute(
            "EXPLAIN QUERY PLAN SELECT MAX(scanned_at_ms) FROM scans WHERE unit_id = 'u'"
        ).fetchall()
    assert "scans_by_unit_time" in str(plan)
