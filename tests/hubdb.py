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
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

__all__ = ["BACKENDS", "PG_URL", "pg_schema_url", "sqlite_locator"]

# "postgresql" joins the default once hub.store.postgres passes the suite;
# DOORSCAN_TEST_BACKENDS=sqlite,postgresql runs both before that.
BACKENDS = os.environ.get("DOORSCAN_TEST_BACKENDS", "sqlite").split(",")

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
