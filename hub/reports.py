"""Usage reports and unit health, checked against the asking principal's role.

Counts only: nothing here reads an identity. Who may see which venue's counts is the
access layer's rule (`hub.access.AccessControlledStore`), which calls these with the one
venue the answer is limited to (`scope`), or None for every venue.

Days are Vietnam days (UTC+7, no daylight saving): a scan at 17:30 UTC counts for
the next day. A unit is *online* while its latest status message says so: the unit
publishes a retained "online" on every connect and then every minute, and the broker
publishes its last will "offline" when the connection drops without a goodbye, within
1.5 keepalives. A unit is *silent* when the hub has heard nothing from it, neither a
status nor a scan, for longer than the threshold (default 30 minutes), online or not:
the minute's status is its heartbeat, so an "online" unit that stopped sending it (a
wedged sender; or a unit older than the periodic status, which reports only on
connect) is highlighted too. An offline unit is not silent until the threshold passes,
so a short network blip shows as offline but is not highlighted.

    >>> usage_per_day(store, None, date(2026, 1, 1),  # doctest: +SKIP
    ...               date(2026, 1, 31), by="district")
    [DayCount(day=datetime.date(2026, 1, 1), key='Thành phố Pleiku', scans=412), ...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

from doorscan.errors import Refusal
from doorscan.timefmt import VIETNAM, vietnam_day
from hub.store import DayCount, ReportStore, Store, VenueLastScan

__all__ = [
    "DEFAULT_SILENT",
    "MAX_REPORT_DAYS",
    "VIETNAM",
    "QuietVenue",
    "ReportsStore",
    "UnitHealth",
    "UsageRow",
    "quiet_venues",
    "units_overview",
    "usage_per_day",
    "vietnam_today",
]

DEFAULT_SILENT = timedelta(minutes=30)
MAX_REPORT_DAYS = 366
"""A usage report covers at most a year of days: longer asks are refused, not slow."""


class ReportsStore(Store, ReportStore, Protocol):
    """A store with the report queries (every `SqliteStore`)."""


UsageRow = DayCount
"""Scans of one Vietnam day for one venue id or district (the store's row, as it is)."""
QuietVenue = VenueLastScan
"""A venue and its newest scan, None when it never had one (the store's row, as it is)."""


@dataclass(frozen=True)
class UnitHealth:
    unit_id: str
    venue_id: str | None  # None: the unit talks but is not registered
    online: bool
    last_seen: datetime | None  # when the hub got its latest status
    last_scan: datetime | None
    backlog: int | None
    clock_trusted: bool | None  # from its status, else of its newest scan
    version: str | None
    silent: bool
    registered: bool = True


def vietnam_today(now: datetime) -> date:
    return vietnam_day(now)


def _as_day(value: date) -> date:
    # A datetime is also a date: take its Vietnam day, not its UTC one.
    return vietnam_today(value) if isinstance(value, datetime) else value


def usage_per_day(
    store: ReportsStore,
    scope: str | None,
    since: date,
    until: date,
    by: Literal["venue", "district"],
) -> list[UsageRow]:
    """Scans per Vietnam day (since..until, both included) per venue or per district.

    Days without scans are not listed. The venue role gets its own venue's counts
    (``by="district"`` then shows its venue's district only).
    """
    since, until = _as_day(since), _as_day(until)
    if since > until:
        raise Refusal("empty_period", "since is after until")
    if (until - since).days + 1 > MAX_REPORT_DAYS:
        raise Refusal("period_too_long", f"a report covers at most {MAX_REPORT_DAYS} days")
    if by not in ("venue", "district"):
        raise Refusal("bad_grouping", f"group by venue or district, not {str(by)[:40]!r}")
    return store.scans_per_day(since, until, by, venue_id=scope)


def quiet_venues(
    store: ReportsStore, scope: str | None, days: int, now: datetime
) -> list[QuietVenue]:
    """Venues with no scan in the last `days` days (or none ever), by venue id."""
    if days < 1:
        raise Refusal("bad_days", "days must be 1 or more")
    quiet = store.venues_last_scan(now - timedelta(days=days))
    return [v for v in quiet if scope is None or v.venue_id == scope]


def units_overview(
    store: ReportsStore,
    scope: str | None,
    now: datetime,
    *,
    silent_after: timedelta = DEFAULT_SILENT,
) -> list[UnitHealth]:
    """Every registered unit, and every unit that talks without being registered (flagged).

    Sorted: unregistered first (they need an operator), then by unit id.
    """
    statuses = {s.unit_id: s for s in store.unit_statuses()}
    units: list[UnitHealth] = []
    for summary in store.unit_scan_summaries():
        status = statuses.pop(summary.unit_id, None)
        units.append(
            _health(
                summary.unit_id,
                summary.venue_id,
                status,
                summary.last_scan,
                summary.last_clock_trusted,
                now,
                silent_after,
            )
        )
    for unit_id, status in statuses.items():
        # Kept by ingest: a unit that talks but is not registered is an operator's task.
        units.append(_health(unit_id, None, status, None, None, now, silent_after))
    if scope is not None:
        units = [u for u in units if u.venue_id == scope]
    return sorted(units, key=lambda u: (u.registered, u.unit_id))


class _StatusRow(Protocol):
    @property
    def received_at(self) -> datetime: ...
    @property
    def online(self) -> bool: ...
    @property
    def status_json(self) -> str: ...


def _health(
    unit_id: str,
    venue_id: str | None,
    status: _StatusRow | None,
    last_scan: datetime | None,
    clock_trusted: bool | None,
    now: datetime,
    silent_after: timedelta,
) -> UnitHealth:
    backlog: int | None = None
    version: str | None = None
    online = False
    last_seen: datetime | None = None
    if status is not None:
        online, last_seen = status.online, status.received_at
        # Ingest stored only statuses that passed the wire's validation.
        data = json.loads(status.status_json)
        backlog = data.get("backlog") if isinstance(data.get("backlog"), int) else None
        version = data.get("software") if isinstance(data.get("software"), str) else None
        if isinstance(data.get("clock_trusted"), bool):
            # The unit's own word is current; a scan's flag may be hours old.
            clock_trusted = data["clock_trusted"]
    heard = [t for t in (last_seen, last_scan) if t is not None]
    silent = not heard or now - max(heard) > silent_after
    return UnitHealth(
        unit_id=unit_id,
        venue_id=venue_id,
        online=online,
        last_seen=last_seen,
        last_scan=last_scan,
        backlog=backlog,
        clock_trusted=clock_trusted,
        version=version,
        silent=silent,
        registered=venue_id is not None,
    )
