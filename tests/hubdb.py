"""The hub database a test runs against: the `hub_db` fixture's backends.

Every hub test that stores scans takes `hub_db`, a locator string that
`tests.hubstore.open_store` and the hub's ``--db`` both accept. The fixture is
parametrised over `BACKENDS`, so the same test runs once on a SQLite file and once
on a PostgreSQL schema of its own (the database at `PG_URL`, dropped afterwards).
PostgreSQL is never skipped: `.ci/run` starts it, and a test fails if it is down.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["BACKENDS", "PG_URL", "pg_schema_url", "raw_sql", "sqlite_locator"]

# Both by default; DOORSCAN_TEST_BACKENDS=sqlite (or postgresql) runs one half, e.g.
# on a machine without PostgreSQL while working on something else.
BACKENDS = os.environ.get("DOORSCAN_TEST_BACKENDS", "sqlite,postgresql").split(",")

PG_URL = os.environ.get("DOORSCAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def sqlite_locator(tmp_path: Path) -> str:
    return str(tmp_path / "hub.db")


def pg_schema_url() -> Iterator[str]:
    """A fresh schema in the test database, as a URL whose search_path is that schema."""
    import psycopg  # imported here: SQLite-only runs need no PostgreSQL driver

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in PG_URL else "?"
    # public stays on the path for extensions (btree_gist) installed there once.
    yield f"{PG_URL}{separator}options={quote(f'-csearch_path={schema},public')}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def raw_sql(locator: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on the database behind the store's back, committed; its rows.

    For tests that read or edit rows as a thief or a bad disk would. ``?`` placeholders
    work on both backends.
    """
    if locator.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(locator, autocommit=True) as pg:
            cursor = pg.execute(sql.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description is not None else []
    conn = sqlite3.connect(locator)
    try:
        with conn:
            return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()
