"""Operators of the hub on SQLite: kept so that older imports keep working.

The rows and the protocol are in `hub.store.base`, the SQL (shared with PostgreSQL)
in `hub.store.common_users`.
"""

from __future__ import annotations

from hub.store.base import StoredToken, StoredUser, UserExists, UserStore
from hub.store.common_users import SqlUsers

__all__ = ["SqliteUsers", "StoredToken", "StoredUser", "UserExists", "UserStore"]

SqliteUsers = SqlUsers
