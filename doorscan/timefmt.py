"""Timestamps on the wire and in stores: RFC 3339, always UTC, millisecond precision.

Stores keep integer milliseconds since the epoch so that range queries stay
integer comparisons; the wire and every output use RFC 3339 with a `Z`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

__all__ = [
    "VIETNAM",
    "format_rfc3339",
    "format_vietnam",
    "from_ms",
    "parse_rfc3339",
    "to_ms",
    "vietnam_day",
]


def parse_rfc3339(text: str) -> datetime:
    """Parse an ISO 8601 / RFC 3339 timestamp that carries an offset; return it in UTC.

    >>> parse_rfc3339("2021-08-15T09:30:00+07:00").isoformat()
    '2021-08-15T02:30:00+00:00'

    A timestamp without an offset is refused: a scan time whose zone is a guess
    would shift contacts by hours.
    """
    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value.astimezone(UTC)


def format_rfc3339(value: datetime) -> str:
    """Format an aware datetime as `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: doorscan only handles aware times")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_vietnam(value: datetime) -> str:
    """An aware datetime as people in Vietnam read it, offset written:
    ``2021-08-15T10:00:00.000+07:00`` (the same instant as ``2021-08-15T03:00:00.000Z``)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: doorscan only handles aware times")
    return value.astimezone(VIETNAM).isoformat(timespec="milliseconds")


def to_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch (the stores' integer time)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: doorscan only handles aware times")
    return round(value.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Inverse of `to_ms`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


VIETNAM = timezone(timedelta(hours=7), "ICT")
"""Vietnam's time: UTC+7 all year. The dates on documents (a CCCD's, a card's) are its days."""


def vietnam_day(value: datetime) -> date:
    """The Vietnam calendar day of an aware time: 17:30 UTC is already tomorrow there."""
    return value.astimezone(VIETNAM).date()
