"""Counts and unit health: the `SqlReports` mixin both stores share (`ReportStore`).

What the units page, the usage reports and the name search read. No identity leaves
this room except through `person_keys_by_name`, which returns person keys for the
access layer to audit and resolve (`hub.access`); every other answer is a count, a
time or a unit's own status.

Portability: the SQL is plain (no SQLite date functions). A day in Vietnam time
(UTC+7, no daylight saving) is computed on the integer milliseconds as
``(scanned_at_ms + 25200000) / 86400000``: integer division in SQLite and in
PostgreSQL alike, and times are after 2020 so the quotient is never negative (where
the two would round differently). "Last scan" per unit and per venue is a correlated
``MAX`` on an index that starts with the unit (``scans_by_unit_time``, migration 7) or
the venue (``scans_by_venue_covering``), so it costs one index probe per unit or venue,
not a pass over the scans.

The mixin uses the store's `_transaction()`, `_query()` and vault; the SQL has ``?``
placeholders (`hub.store.common`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, Literal

from doorscan.timefmt import from_ms, to_ms
from hub.store.base import (
    DayCount,
    StoredUnitConfig,
    StoredUnitStatus,
    StoreError,
    UnitScanSummary,
    VenueLastScan,
)
from hub.store.common import (
    DAY_MS,
    VIETNAM_OFFSET_MS,
    SqlConnection,
    day_of_number,
    day_start_ms,
    name_key,
    scan_aad,
)
from hub.vault import Vault

__all__ = ["SqlReports"]


_DAY_SQL = f"(s.scanned_at_ms + {VIETNAM_OFFSET_MS}) / {DAY_MS}"


class SqlReports:
    """`ReportStore` for both stores (a mixin: the connection, lock and vault are the store's)."""

    # Provided by the store; declared so that mypy checks the mixin on its own.
    _vault: Vault

    def _transaction(self) -> AbstractContextManager[SqlConnection]:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    # -- unit status ------------------------------------------------------------------

    def upsert_unit_status(
        self,
        unit_id: str,
        received_at: datetime,
        online: bool,
        status_json: str,
        drained_at: datetime | None = None,
    ) -> None:
        """Keep the unit's latest status; the same message again does not move its time.

        The broker hands the retained status to the hub again on every (re)subscribe;
        that copy says nothing new, so ``received_at`` keeps the time the hub first got
        it, and "last seen" stays the time the unit spoke. `drained_at` (the status's
        own time, when it said ``"backlog": 0`` on a trusted clock) only moves forward:
        it is the unit's word that it held nothing unsent then (`hub.history`).
        """
        drained_ms = None if drained_at is None else to_ms(drained_at)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO unit_status (unit_id, received_at_ms, online, status_json, "
                "drained_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (unit_id) DO UPDATE SET "
                "received_at_ms = excluded.received_at_ms, online = excluded.online, "
                "status_json = excluded.status_json, drained_at_ms = CASE "
                "WHEN unit_status.drained_at_ms IS NULL "
                "OR excluded.drained_at_ms > unit_status.drained_at_ms "
                "THEN COALESCE(excluded.drained_at_ms, unit_status.drained_at_ms) "
                "ELSE unit_status.drained_at_ms END "
                "WHERE unit_status.status_json <> excluded.status_json",
                (unit_id, to_ms(received_at), online, status_json, drained_ms),
            )

    def unit_drained_at(self, unit_id: str) -> datetime | None:
        """The latest time the unit said it held nothing unsent (`upsert_unit_status`)."""
        rows = self._query("SELECT drained_at_ms FROM unit_status WHERE unit_id = ?", (unit_id,))
        return None if not rows or rows[0][0] is None else from_ms(int(rows[0][0]))

    # -- remote config ----------------------------------------------------------------

    def record_unit_config(
        self, unit_id: str, version: int, settings: dict[str, Any], issued_at: datetime
    ) -> StoredUnitConfig:
        """Keep a remote config the hub issued (and published) to a unit.

        Versions only go up: one at or below a version already recorded for the unit
        raises `StoreError` (two operators at once; the second one runs again).
        """
        text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
        with self._transaction() as conn:
            (latest,) = conn.execute(
                "SELECT MAX(version) FROM unit_configs WHERE unit_id = ?", (unit_id,)
            ).fetchone()
            if latest is not None and int(latest) >= version:
                raise StoreError(
                    f"unit {unit_id} has config version {latest} already; not recording {version}"
                )
            conn.execute(
                "INSERT INTO unit_configs (unit_id, version, settings_json, issued_at_ms) "
                "VALUES (?, ?, ?, ?)",
                (unit_id, version, text, to_ms(issued_at)),
            )
        return StoredUnitConfig(unit_id, version, dict(settings), issued_at)

    def unit_config(self, unit_id: str) -> StoredUnitConfig | None:
        """The latest remote config issued to the unit, or None."""
        rows = self._query(
            "SELECT version, settings_json, issued_at_ms FROM unit_configs WHERE unit_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (unit_id,),
        )
        if not rows:
            return None
        version, text, issued_ms = rows[0]
        return StoredUnitConfig(unit_id, int(version), json.loads(text), from_ms(int(issued_ms)))

    def unit_statuses(self) -> list[StoredUnitStatus]:
        rows = self._query(
            "SELECT unit_id, received_at_ms, online, status_json FROM unit_status ORDER BY unit_id"
        )
        return [StoredUnitStatus(u, from_ms(ms), bool(on), text) for u, ms, on, text in rows]

    def units_online(self) -> int:
        """Units whose latest status says online (the broker's last will says otherwise)."""
        return int(self._query("SELECT COUNT(*) FROM unit_status WHERE online")[0][0])

    def unit_scan_summaries(self) -> list[UnitScanSummary]:
        """Every registered unit with its newest scan's time and clock flag."""
        rows = self._query(
            "SELECT u.unit_id, u.venue_id, u.active, "
            "(SELECT MAX(s.scanned_at_ms) FROM scans s WHERE s.unit_id = u.unit_id), "
            "(SELECT s.clock_trusted FROM scans s WHERE s.unit_id = u.unit_id "
            " ORDER BY s.scanned_at_ms DESC LIMIT 1) "
            "FROM units u ORDER BY u.unit_id"
        )
        return [
            UnitScanSummary(
                unit_id,
                venue_id,
                bool(active),
                None if last_ms is None else from_ms(last_ms),
                None if trusted is None else bool(trusted),
            )
            for unit_id, venue_id, active, last_ms, trusted in rows
        ]

    # -- usage ------------------------------------------------------------------------

    def scans_per_day(
        self,
        since: date,
        until: date,
        by: Literal["venue", "district"],
        venue_id: str | None = None,
    ) -> list[DayCount]:
        """Scans per Vietnam day from `since` to `until` (both included), per venue or district.

        With `venue_id`, only that venue's scans are counted (the venue role's view).
        """
        if by not in ("venue", "district"):
            raise ValueError(f"by must be 'venue' or 'district', not {by!r}")
        key = "s.venue_id" if by == "venue" else "v.district"
        params: list[Any] = [day_start_ms(since), day_start_ms(until + timedelta(days=1))]
        where = "s.scanned_at_ms >= ? AND s.scanned_at_ms < ?"
        if venue_id is not None:
            where += " AND s.venue_id = ?"
            params.append(venue_id)
        rows = self._query(
            f"SELECT {_DAY_SQL} AS day_number, {key} AS report_key, COUNT(*) "  # noqa: S608
            "FROM scans s JOIN venues v ON v.venue_id = s.venue_id "
            f"WHERE {where} GROUP BY day_number, report_key ORDER BY day_number, report_key",
            params,
        )
        return [DayCount(day_of_number(int(n)), str(k), int(c)) for n, k, c in rows]

    def venues_last_scan(self, before: datetime) -> list[VenueLastScan]:
        """Venues whose newest scan is older than `before`, or that have none, by id."""
        rows = self._query(
            "SELECT venue_id, name, district, last_ms FROM ("
            "SELECT v.venue_id, v.name, v.district, "
            "(SELECT MAX(s.scanned_at_ms) FROM scans s WHERE s.venue_id = v.venue_id) AS last_ms "
            "FROM venues v) q WHERE last_ms IS NULL OR last_ms < ? ORDER BY venue_id",
            (to_ms(before),),
        )
        return [
            VenueLastScan(v, name, district, None if ms is None else from_ms(ms))
            for v, name, district, ms in rows
        ]

    # -- name search ------------------------------------------------------------------

    def person_keys_by_name(self, folded: str) -> list[str]:
        """Person keys of everyone scanned with this name, diacritics and case ignored.

        The index holds only a keyed hash of the folded name (`name_key`), so the file
        alone does not tell who is in it; one scan per person is opened to read the key.
        """
        key = name_key(self._vault, folded)
        if key is None:
            return []
        rows = self._query(
            # s.name_key repeats the condition so that the outer side is an index range
            # too (a partitioned PostgreSQL table has no index on scan_id alone).
            "SELECT s.scan_id, s.identity FROM scans s JOIN ("
            "SELECT MAX(scan_id) AS scan_id FROM scans WHERE name_key = ? GROUP BY person_key"
            ") m ON m.scan_id = s.scan_id WHERE s.name_key = ?",
            (key, key),
        )
        keys = {
            str(json.loads(self._vault.open(bytes(sealed), scan_aad(scan_id)))["person_key"])
            for scan_id, sealed in rows
        }
        return sorted(keys)
