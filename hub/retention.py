"""How long the hub keeps personal data, and the purge that enforces it.

Check-ins are kept for a retention period (default 28 days: two incubation periods,
enough for a trace to reach F2) and then deleted by ``doorscan-hub purge``, run daily
from cron or a systemd timer:

    >>> purge_expired(store, now=datetime.now(UTC), retention_days=28)  # doctest: +SKIP
    {'scans': 120, 'dead_letters': 3, 'batches': 40}

What is deleted: scans, dead letters (they hold raw QR text, i.e. identities) and
batch-id records older than ``now - retention``. What is kept: the registry (venues,
units: no personal data) and the audit log, which is the record of who read whose
identity and why; deleting it with the data would erase the evidence of misuse. Its
own retention is a policy decision (docs/decisions.md). On the unit, the journal keeps
a scan only until the hub acked it and a day has passed (`device.journal.purge_settled`).

A purged batch id can no longer be recognised, so a replay of a batch older than the
period would store its scans again; they are older than the period and go at the next
purge.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.access import Principal
from hub.store import Retention

__all__ = ["DEFAULT_RETENTION_DAYS", "purge_expired", "retention_cutoff"]

DEFAULT_RETENTION_DAYS = 28


def retention_cutoff(now: datetime, retention_days: float) -> datetime:
    """The oldest time still kept; rows strictly older than this are purged."""
    if not retention_days > 0:
        raise ValueError(f"a retention period must be positive, not {retention_days} days")
    return now - timedelta(days=retention_days)


def purge_expired(
    store: Retention,
    now: datetime,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    *,
    by: Principal | None = None,
) -> dict[str, int]:
    """Delete what is older than the period in one transaction, with an audit entry
    naming `by` (who ran the purge; None for the hub's own timer)."""
    return store.purge_older_than(
        retention_cutoff(now, retention_days),
        at=now,
        reason=f"retention: {retention_days:g} days",
        by=by.to_audit() if by is not None else None,
    )
