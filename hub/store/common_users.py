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
