"""The audit entries the access layer writes: every read, every refusal, every account event.

An entry names who asked (``params["principal"]``: account, channel, client address,
role), what was asked (the action and its parameters, people by pseudonym only), why
(the reason, which the store encrypts at rest) and how much came back (``results``).
A read is recorded after it ran, with its size, or with the error that stopped it:

    >>> trail = AuditTrail(store, principal)                                # doctest: +SKIP
    >>> trail.read("visitors", "ca F0 12", {"venue_id": "cho-pleiku"}, now,
    ...            lambda: store.checkins_at(...), size=len)                # doctest: +SKIP

Account events (logins, token and user changes) have no principal of their own when
nobody is logged in yet; `record_event` names the account they concern instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from hub.access.policy import Forbidden, Principal

__all__ = ["AuditSink", "AuditTrail", "record_event"]

T = TypeVar("T")
_NO_REASON = "(no reason given)"


class AuditSink(Protocol):
    """What the audit needs of a store: append one entry to the chain."""

    def record_audit(
        self, action: str, reason: str, params: dict[str, Any], at: datetime
    ) -> int: ...


class AuditTrail:
    """Writes the entries of one principal's requests."""

    def __init__(self, sink: AuditSink, principal: Principal) -> None:
        self._sink = sink
        self.principal = principal

    def record(self, action: str, reason: str, params: dict[str, Any], at: datetime) -> None:
        self._sink.record_audit(
            action,
            " ".join(reason.split()) or _NO_REASON,
            {**params, "principal": self.principal.to_audit()},
            at,
        )

    def refused(self, action: str, why: str, reason: str, at: datetime, **params: Any) -> Forbidden:
        """Record a request refused for its role, then return the error to raise.

        A role asking for what it may not have is worth a record (a venue owner probing
        other venues, an admin trying a trace); the entry names no identity: a person
        appears by pseudonym only.
        """
        self.record("refused", reason, {"attempted": action, "why": why, **params}, at)
        return Forbidden(why)

    def read(
        self,
        action: str,
        reason: str,
        params: dict[str, Any],
        at: datetime,
        run: Callable[[], T],
        size: Callable[[T], int],
    ) -> T:
        """Run the read and record it with its result size, or with what stopped it.

        The entry is written before the answer is handed back, so no answer leaves the
        hub unrecorded; a read that failed half-way is on the record too.
        """
        try:
            result = run()
        except Exception as exc:
            self.record(action, reason, {**params, "error": type(exc).__name__}, at)
            raise
        self.record(action, reason, {**params, "results": size(result)}, at)
        return result


def record_event(
    sink: AuditSink,
    action: str,
    account: str,
    at: datetime,
    *,
    by: Principal | None = None,
    reason: str = "",
    **params: Any,
) -> None:
    """An account event: ``login``, ``login_failed``, ``login_locked``, ``logout``,
    ``token_create``, ``token_revoke``, ``user_add``, ``user_change``, ``unlock``...

    `account` is the account the event concerns (cut to 64 characters: a login form
    takes any text); `by` is who did it when that is someone else (an admin).
    """
    entry: dict[str, Any] = {**params, "account": account[:64]}
    if by is not None:
        entry["principal"] = by.to_audit()
    sink.record_audit(action, " ".join(reason.split()) or _NO_REASON, entry, at)
