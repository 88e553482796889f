"""Who is asking and what each role may read: principals, roles, masking, request checks.

Every read the hub serves is asked by a `Principal`: a role (and for the venue role the
one venue it owns) and the account behind it, the channel it came in on (``cli``,
``api``, ``web``) and, over HTTP, the client address. The account is what the audit log
names, so two tracers, the command line and the API are told apart:

    >>> tracer = Principal(Role.TRACER, account="ytepleiku", channel=Channel.API,
    ...                    address="10.0.0.7")
    >>> tracer.to_audit()["account"], tracer.to_audit()["channel"]
    ('ytepleiku', 'api')

MoH decision 2666/QĐ-BYT says venue owners see masked data only (its examples:
"Họ tên đệm***", "0123456***") and the full data is for the authorities; `mask_name`
and `mask_id_number` are those masks.
"""

from __future__ import annotations

import unicodedata
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from doorscan.errors import DoorscanError, Refusal

__all__ = [
    "ALL_VENUE_ROLES",
    "MAX_REASON_CHARS",
    "Channel",
    "Forbidden",
    "Principal",
    "PrincipalError",
    "Role",
    "check_period",
    "clean_reason",
    "mask_id_number",
    "mask_name",
]

NAME_MASK = "***"
ID_KEPT_CHARS = 7
"""2666's example "0123456***" keeps 7 characters."""
ID_MIN_MASKED = 3
"""A short document number (a passport, a CMND) still loses at least its last 3 characters."""
EARLIEST = datetime(1971, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""Times outside these bounds name no scan and would overflow the millisecond clock."""
MAX_REASON_CHARS = 500


class Forbidden(DoorscanError, PermissionError):
    """The principal's role may not read this; nothing was read."""


class PrincipalError(DoorscanError, ValueError):
    """A role and venue id that do not go together (a venue without its id, or the reverse)."""


class Role(StrEnum):
    TRACER = "tracer"
    VENUE = "venue"
    REPORTER = "reporter"
    ADMIN = "admin"


ALL_VENUE_ROLES = (Role.ADMIN, Role.REPORTER, Role.TRACER)
"""Roles whose counts and unit lists cover every venue (the venue role sees its own)."""


class Channel(StrEnum):
    """How the request reached the hub: the command line, the JSON API, the dashboard."""

    CLI = "cli"
    API = "api"
    WEB = "web"


@dataclass(frozen=True)
class Principal:
    """Who asks: a role (the venue role with its venue), and the account behind it.

    `account` is the hub user id over HTTP and the operating-system user on the command
    line; `address` is the client address over HTTP (None on the command line).
    """

    role: Role
    venue_id: str | None = None
    _: KW_ONLY
    account: str
    channel: Channel
    address: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise PrincipalError(f"unknown role {self.role!r}")
        if self.role is Role.VENUE and not (self.venue_id and self.venue_id.strip()):
            raise PrincipalError("the venue role needs the venue's id")
        if self.role is not Role.VENUE and self.venue_id is not None:
            raise PrincipalError(f"the {self.role} role reads no single venue; give no venue id")
        if not self.account.strip():
            raise PrincipalError("a principal names its account")
        if not isinstance(self.channel, Channel):
            raise PrincipalError(f"unknown channel {self.channel!r}")

    def to_audit(self) -> dict[str, Any]:
        """What an audit entry records of the asker (``params["principal"]``)."""
        return {
            "role": str(self.role),
            "venue_id": self.venue_id,
            "account": self.account,
            "channel": str(self.channel),
            "address": self.address,
        }

    def __str__(self) -> str:
        role = f"{self.role} {self.venue_id}" if self.venue_id else str(self.role)
        return f"{self.account} ({role}, {self.channel})"


def mask_name(name: str) -> str:
    """A name as 2666 lets a venue see it: family and middle names, the given name masked.

    >>> mask_name("Nguyễn Văn An"), mask_name("Rơ Châm H'Hen"), mask_name("Ksor")
    ('Nguyễn Văn***', 'Rơ Châm***', 'K***')

    The given name is the last word (Vietnamese order: family, middle, given), so an
    apostrophe inside it (H'Hen) belongs to what is masked. A one-word name keeps its
    first letter with its accents. Text is NFC-normalised first, so a name stored
    decomposed (NFD) is cut at the same place and comes out composed.
    """
    words = unicodedata.normalize("NFC", name).split()
    if not words:
        return NAME_MASK
    if len(words) > 1:
        return " ".join(words[:-1]) + NAME_MASK
    word = words[0]
    end = 1
    while end < len(word) and unicodedata.combining(word[end]):
        end += 1  # a letter with a mark NFC has no single code point for stays whole
    return word[:end] + NAME_MASK


def mask_id_number(id_number: str) -> str:
    """An ID number as 2666 lets a venue see it: the first 7 characters, then ``*``.

    >>> mask_id_number("001090123456"), mask_id_number("******123456")
    ('0010901*****', '******1*****')

    The length is kept. A number of 10 characters or fewer keeps fewer, so that at least
    its last 3 are masked (a 9-digit CMND shows 6, an 8-character passport 5).
    """
    text = unicodedata.normalize("NFC", id_number.strip())
    kept = max(0, min(ID_KEPT_CHARS, len(text) - ID_MIN_MASKED))
    return text[:kept] + "*" * (len(text) - kept)


def clean_reason(reason: str, what: str) -> str:
    """The reason with its whitespace folded; `Refusal` ``no_reason`` if there is none.

    >>> clean_reason("  F0   case 12 ", "a trace")
    'F0 case 12'
    """
    reason = " ".join(reason.split())
    if not reason:
        raise Refusal("no_reason", f"{what} reads identities: give the reason (e.g. the case)")
    if len(reason) > MAX_REASON_CHARS:
        raise Refusal("long_reason", f"a reason has at most {MAX_REASON_CHARS} characters")
    return reason


def check_period(since: datetime, until: datetime) -> None:
    """The one check of a period every read makes: aware times, in range, in order."""
    if since.tzinfo is None or until.tzinfo is None:
        raise Refusal("naive_time", "since and until must carry a UTC offset")
    for value in (since, until):
        if not EARLIEST <= value <= LATEST:
            raise Refusal("bad_time", f"times must lie between {EARLIEST.year} and 9000")
    if since > until:
        raise Refusal("empty_period", "since is after until")
