"""Operators of the hub and their tokens: the `SqlUsers` mixin both stores share.

The tables are ``users`` and ``tokens``. The store keeps what `hub.auth` hands it and
decides nothing: a password only as its scrypt string, a token only as its SHA-256
hex, so a copy of the database lets nobody log in. The rules (expiry, revocation,
inactive users) are `hub.auth`'s. The SQL is plain, with ``?`` placeholders
(`hub.store.common`); the mixin uses the store's `_transaction()` and `_query()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from hub.store.base import StoredToken, StoredUser, UserExists
from hub.store.common import SqlConnection

__all__ = ["SqlUsers"]


_USER_COLUMNS = "user_id, display_name, role, venue_id, password_hash, active, created_at_ms"
_TOKEN_COLUMNS = "token_hash, user_id, kind, created_at_ms, expires_at_ms, revoked"  # noqa: S105 (column names)


class SqlUsers:
    """`UserStore` for both stores (a mixin: the connection and lock are the store's)."""

    # Provided by the store; declared so that mypy checks the mixin on its own.
    def _transaction(self) -> AbstractContextManager[SqlConnection]:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def add_user(self, user: StoredUser) -> None:
        """Insert a new user; `UserExists` if the id is taken (nothing is overwritten)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
                "ON CONFLICT (user_id) DO NOTHING",
                (
                    user.user_id,
                    user.display_name,
                    user.role,
                    user.venue_id,
                    user.password_hash,
                    user.active,
                    user.created_at_ms,
                ),
            )
            if cursor.rowcount != 1:
                raise UserExists(f"the user {user.user_id!r} exists already")

    def user(self, user_id: str) -> StoredUser | None:
        rows = self._query(
            f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?",  # noqa: S608
            (user_id,),
        )
        return _user(rows[0]) if rows else None

    def users(self) -> list[StoredUser]:
        rows = self._query(f"SELECT {_USER_COLUMNS} FROM users ORDER BY user_id")  # noqa: S608
        return [_user(row) for row in rows]

    def set_user_active(self, user_id: str, active: bool) -> bool:
        """Enable or disable a user; False if there is no such user."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET active = ? WHERE user_id = ?", (active, user_id)
            )
            return cursor.rowcount == 1

    def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace a user's password hash (a reset, or a rehash at a higher cost)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            )
            return cursor.rowcount == 1

    def set_user_role(self, user_id: str, role: str, venue_id: str | None) -> bool:
        """Change a user's role (and venue, for the venue role); False if no such user."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET role = ?, venue_id = ? WHERE user_id = ?",
                (role, venue_id, user_id),
            )
            return cursor.rowcount == 1

    def tokens_of(self, user_id: str) -> list[StoredToken]:
        """A user's tokens (hashes only), newest first."""
        rows = self._query(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = ? "  # noqa: S608
            "ORDER BY created_at_ms DESC",
            (user_id,),
        )
        return [StoredToken(h, u, k, c, e, bool(r)) for h, u, k, c, e, r in rows]

    # -- failed logins (hub.login_throttle decides; this keeps the count atomic) -------------

    _login_lock_sql = ""
    """Serialises login decisions; PostgreSQL sets an advisory lock, SQLite's BEGIN
    IMMEDIATE already holds the write lock."""

    def reserve_login(
        self, limits: Sequence[tuple[str, int]], now_ms: int, window_ms: int
    ) -> tuple[int, list[int]]:
        """Count a login attempt against each (key, limit) before its password is checked.

        In one serialised transaction: forget failures older than the window; if any key
        has `limit` failures left in it, return the milliseconds until the oldest that
        counts ages out (and record nothing); else record one failure per key and return
        (0, their ids). The attempt counts as failed until `settle_login` says otherwise,
        so a burst of concurrent attempts cannot check more passwords than the limit.
        """
        with self._transaction() as conn:
            if self._login_lock_sql:
                conn.execute(self._login_lock_sql)
            conn.execute("DELETE FROM login_failures WHERE at_ms <= ?", (now_ms - window_ms,))
            wait_ms = 0
            for key, limit in limits:
                times = [
                    int(t)
                    for (t,) in conn.execute(
                        "SELECT at_ms FROM login_failures WHERE key = ? ORDER BY at_ms", (key,)
                    ).fetchall()
                ]
                if len(times) >= limit:
                    wait_ms = max(wait_ms, times[len(times) - limit] + window_ms - now_ms)
            if wait_ms > 0:
                return wait_ms, []
            ids = [
                int(
                    conn.execute(
                        "INSERT INTO login_failures (key, at_ms) VALUES (?, ?) RETURNING id",
                        (key, now_ms),
                    ).fetchall()[0][0]
                )
                for key, _ in limits
            ]
            return 0, ids

    def settle_login(self, reserved: Sequence[int], succeeded_key: str | None) -> None:
        """After the check: a good password takes back its reservation and clears the
        failures of `succeeded_key` (the user's); a wrong one leaves them counted."""
        if succeeded_key is None:
            return
        with self._transaction() as conn:
            for row_id in reserved:
                conn.execute("DELETE FROM login_failures WHERE id = ?", (row_id,))
            conn.execute("DELETE FROM login_failures WHERE key = ?", (succeeded_key,))

    def login_failure_counts(self, since_ms: int) -> dict[str, int]:
        """Failures (and attempts being checked) per key since `since_ms`."""
        rows = self._query(
            "SELECT key, COUNT(*) FROM login_failures WHERE at_ms > ? GROUP BY key", (since_ms,)
        )
        return {str(key): int(count) for key, count in rows}

    def clear_login_failures(self, key: str) -> int:
        """Forget a key's failures (an admin unlocking a user); how many were forgotten."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM login_failures WHERE key = ?", (key,)).rowcount

    def add_token(self, token: StoredToken) -> None:
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    token.token_hash,
                    token.user_id,
                    token.kind,
                    token.created_at_ms,
                    token.expires_at_ms,
                    token.revoked,
                ),
            )

    def token(self, token_hash: str) -> StoredToken | None:
        rows = self._query(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?",  # noqa: S608
            (token_hash,),
        )
        if not rows:
            return None
        token_hash, user_id, kind, created, expires, revoked = rows[0]
        return StoredToken(token_hash, user_id, kind, created, expires, bool(revoked))

    def revoke_token(self, token_hash: str) -> bool:
        """Mark a token revoked; False if it is unknown. Revoking twice is harmless."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE tokens SET revoked = TRUE WHERE token_hash = ?", (token_hash,)
            )
            return cursor.rowcount == 1


def _user(row: Sequence[Any]) -> StoredUser:
    user_id, display_name, role, venue_id, password_hash, active, created = row
    return StoredUser(user_id, display_name, role, venue_id, password_hash, bool(active), created)
