"""Counts and unit health on SQLite: kept so that older imports keep working.

The rows and `ReportStore` are in `hub.store.base`, the SQL (shared with PostgreSQL)
in `hub.store.common_reports`, the day helpers in `hub.store.common`.
"""

from __future__ import annotations

from hub.store.base import (
    DayCount,
    ReportStore,
    StoredUnitStatus,
    UnitScanSummary,
    VenueLastScan,
)
from hub.store.common import DAY_MS, VIETNAM_OFFSET_MS, day_of_number, day_start_ms
from hub.store.common_reports import SqlReports

__all__ = [
    "DAY_MS",
    "VIETNAM_OFFSET_MS",
    "DayCount",
    "ReportStore",
    "SqliteReports",
    "StoredUnitStatus",
    "UnitScanSummary",
    "VenueLastScan",
    "day_of_number",
    "day_start_ms",
]

SqliteReports = SqlReports
