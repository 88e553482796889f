"""Slow down password guessing: a few failed logins, then a pause; decided atomically.

scrypt makes each guess cost the hub a fraction of a second, which still allows tens of
thousands of guesses a day against one account. `LoginThrottle` counts failed logins in
a sliding window, per user id and per client address, in the hub's database:

    >>> throttle = LoginThrottle()
    >>> attempt = throttle.reserve(store, "ytepleiku", "10.0.0.7", now)   # doctest: +SKIP
    >>> attempt.wait_s                    # 0.0: go ahead; else seconds to wait
    >>> throttle.settle(store, attempt, ok=False)                         # doctest: +SKIP

An attempt is counted *before* its password is checked (`reserve`, one serialised
transaction) and taken back only if the password was right (`settle`), so a burst of
concurrent guesses checks at most the limit's worth of passwords, never more. The count
lives in the database: N web processes share it, a restart keeps it, and a flood of
made-up user ids cannot push a real one out (each ages out of the window on its own).

A locked user id is locked for everybody (the per-address limit is higher: many tracers
sit behind one office NAT), so whoever knows a login id can keep it locked by failing;
an admin lifts that with ``doorscan-hub user unlock`` (`unlock`), and the audit log
names the addresses the failures came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from doorscan.timefmt import to_ms

__all__ = ["LoginAttempt", "LoginThrottle", "ThrottleStore", "user_key"]


class ThrottleStore(Protocol):
    def reserve_login(
        self, limits: list[tuple[str, int]], now_ms: int, window_ms: int
    ) -> tuple[int, list[int]]: ...
    def settle_login(self, reserved: list[int], succeeded_key: str | None) -> None: ...
    def clear_login_failures(self, key: str) -> int: ...
    def login_failure_counts(self, since_ms: int) -> dict[str, int]: ...


def user_key(user_id: str) -> str:
    return "user:" + user_id.casefold()[:128]


def _address_key(address: str) -> str:
    return "address:" + address[:64]


@dataclass(frozen=True)
class LoginAttempt:
    """One login attempt as counted: `wait_s` > 0 means refused before any check."""

    user_id: str
    address: str
    wait_s: float
    reserved: list[int] = field(default_factory=list)


class LoginThrottle:
    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 30,
        window: timedelta = timedelta(minutes=15),
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window

    def reserve(
        self, store: ThrottleStore, user_id: str, address: str, now: datetime
    ) -> LoginAttempt:
        """Count this attempt as a failure until settled; or say how long to wait."""
        limits = [(user_key(user_id), self.per_user), (_address_key(address), self.per_address)]
        window_ms = int(self.window.total_seconds() * 1000)
        wait_ms, reserved = store.reserve_login(limits, to_ms(now), window_ms)
        return LoginAttempt(user_id, address, wait_ms / 1000, reserved)

    def settle(self, store: ThrottleStore, attempt: LoginAttempt, *, ok: bool) -> None:
        """A right password clears the user's failures and takes this attempt back."""
        if attempt.wait_s <= 0:
            store.settle_login(attempt.reserved, user_key(attempt.user_id) if ok else None)

    def locked_users(self, store: ThrottleStore, now: datetime) -> set[str]:
        """User ids (case-folded) whose failures in the window reach the per-user limit."""
        since_ms = to_ms(now) - int(self.window.total_seconds() * 1000)
        counts = store.login_failure_counts(since_ms)
        prefix = "user:"
        return {
            key[len(prefix) :]
            for key, count in counts.items()
            if key.startswith(prefix) and count >= self.per_user
        }

    @staticmethod
    def unlock(store: ThrottleStore, user_id: str) -> int:
        """Forget a user's failed logins; how many there were."""
        return store.clear_login_failures(user_key(user_id))
