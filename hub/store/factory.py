"""Open the hub store a locator names: a SQLite path, or a PostgreSQL URL.

    >>> open_hub_store("hub.db", vault=vault)                                  # doctest: +SKIP
    >>> open_hub_store("postgresql://hub@db.example/doorscan", vault=vault)    # doctest: +SKIP

The PostgreSQL backend (and psycopg) is imported only when a URL asks for it, so a
SQLite hub starts without it.

This is the one store module the web and CLI layers import (tests/test_layers.py):
they open a store here and hand it to `hub.access`, `hub.auth` or ingest, and take the
store's type and error from here too.
"""

from __future__ import annotations

from pathlib import Path

from hub.store.base import HubStore, StoreError, StoreUnavailable
from hub.store.sqlite import SqliteStore
from hub.vault import Vault

__all__ = [
    "HubStore",
    "StoreError",
    "StoreUnavailable",
    "is_postgres",
    "open_hub_store",
    "sqlite_path",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(locator: str) -> bool:
    return locator.startswith(_POSTGRES_SCHEMES)


def sqlite_path(locator: str) -> str | None:
    """The file a SQLite locator (a path or ``sqlite:///path``) names; None for other URLs."""
    if locator.startswith("sqlite:///"):
        return locator.removeprefix("sqlite:///")
    if "://" in locator:
        return None
    return locator


def open_hub_store(locator: str, *, vault: Vault, busy_timeout_ms: int = 10_000) -> HubStore:
    """The store at `locator`, migrated to the current schema, opened with `vault`.

    `busy_timeout_ms` is SQLite's wait for another writer; PostgreSQL's writers queue
    on row and table locks without a timeout.
    """
    if is_postgres(locator):
        # Imported here on purpose: psycopg is needed only by a PostgreSQL hub.
        from hub.store.postgres import PostgresStore

        return PostgresStore(locator, vault=vault)
    path = sqlite_path(locator)
    if path is None:
        raise StoreError(
            f"{locator!r}: not a hub database (give a path, sqlite:///path or postgresql://...)"
        )
    return SqliteStore(
        Path(path) if path != ":memory:" else path, vault=vault, busy_timeout_ms=busy_timeout_ms
    )
