"""The audit log's hash chain: intact under concurrent writers; each kind of tampering shows."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.audit import GENESIS_HASH, entry_hash
from hub.cli import main
from hub.store import HubStore, SqliteStore, StoreError
from tests.hubdb import raw_sql
from tests.hubstore import open_store

T0 = datetime(2021, 8, 15, 2, 30, tzinfo=UTC)


def write_entries(store: HubStore, n: int, tag: str = "") -> None:
    for i in range(n):
        store.record_audit(
            "trace",
            f"ca F0 số {i}{tag}",
            {"id": f"0640901234{i:02d}", "depth": 2},
            T0 + timedelta(minutes=i),
        )


@pytest.fixture
def db(hub_db: str) -> Iterator[str]:
    with open_store(hub_db) as store:
        write_entries(store, 6)
    yield hub_db


def tamper(db: str, sql: str, *params: object) -> None:
    """Edit rows behind the store's back, as someone with the database in hand could."""
    assert raw_sql(db, sql + " RETURNING 1", *params)  # it changed something


def verify(path: str) -> tuple[bool, int | None, str | None]:
    with open_store(path) as store:
        check = store.verify_audit()
    return check.ok, check.first_bad_id, check.problem


def test_each_entry_chains_from_the_one_before(db: str) -> None:
    with open_store(db) as store:
        entries = list(reversed(store.audit_entries()))
        check = store.verify_audit()
    assert [e.id for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    # The hash covers the reason as stored: sealed (the store hands it back opened).
    assert entries[2].reason == "ca F0 số 2"
    ((stored_reason,),) = raw_sql(db, "SELECT reason FROM audit WHERE id = 3")
    assert stored_reason.startswith("sealed1:") and "ca F0" not in stored_reason
    assert entries[2].hash == entry_hash(
        3,
        1628994720000,  # T0 + 2 minutes
        "trace",
        stored_reason,
        '{"depth": 2, "id": "064090123402"}',
        entries[1].hash,
    )
    assert (check.ok, check.entries, check.head_hash) == (True, 6, entries[-1].hash)


def test_the_encoding_keeps_field_boundaries() -> None:
    assert entry_hash(1, 0, "a", "bc", "{}", GENESIS_HASH) != entry_hash(
        1, 0, "ab", "c", "{}", GENESIS_HASH
    )


def test_two_threads_and_two_connections_do_not_fork_the_chain(hub_db: str) -> None:
    with open_store(hub_db) as shared, open_store(hub_db) as other:
        threads = [
            threading.Thread(target=write_entries, args=(s, 40, f"/{n}"))
            for n, s in enumerate([shared, shared, other])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        check = other.verify_audit()
    assert (check.ok, check.entries, check.problem) == (True, 120, None)


@pytest.mark.parametrize(
    ("column", "value"),
    [("reason", "nothing to see"), ("params_json", '{"depth": 9}'), ("at_ms", 0)],
)
def test_an_edited_entry_is_named(db: str, column: str, value: object) -> None:
    tamper(db, f"UPDATE audit SET {column} = ? WHERE id = 4", value)
    ok, bad_id, problem = verify(db)
    assert (ok, bad_id) == (False, 4)
    assert problem is not None and "edited" in problem


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(db: str) -> None:
    ((at_ms, params, prev),) = raw_sql(
        db, "SELECT at_ms, params_json, prev_hash FROM audit WHERE id = 3"
    )
    tamper(
        db,
        "UPDATE audit SET reason = 'x', hash = ? WHERE id = 3",
        entry_hash(3, at_ms, "trace", "x", params, prev),
    )
    assert verify(db)[:2] == (False, 4)


def test_a_deleted_middle_entry_is_found(db: str) -> None:
    tamper(db, "DELETE FROM audit WHERE id = 3")
    ok, bad_id, problem = verify(db)
    assert (ok, bad_id) == (False, 4)
    assert problem is not None and "entry 3 is missing" in problem


def test_reordered_entries_are_found(db: str) -> None:
    # Swap the contents (hashes included) of entries 2 and 5: each keeps a valid-looking
    # hash of itself, but not under its id nor in its place in the chain.
    cols = "at_ms, action, reason, params_json, prev_hash, hash"
    (two,) = raw_sql(db, f"SELECT {cols} FROM audit WHERE id = 2")
    (five,) = raw_sql(db, f"SELECT {cols} FROM audit WHERE id = 5")
    update = (
        "UPDATE audit SET at_ms = ?, action = ?, reason = ?, params_json = ?, prev_hash = ?, "
        "hash = ? WHERE id = ?"
    )
    tamper(db, update, *five, 2)
    tamper(db, update, *two, 5)
    assert verify(db)[:2] == (False, 2)


@pytest.mark.parametrize("deleted", [1, 2])
def test_deleting_the_newest_entries_is_found_through_the_head(db: str, deleted: int) -> None:
    tamper(db, "DELETE FROM audit WHERE id > ?", 6 - deleted)
    ok, bad_id, problem = verify(db)
    assert (ok, bad_id) == (False, 7 - deleted)
    assert problem is not None and "newest entries were deleted" in problem


def test_a_deleted_head_is_found(db: str) -> None:
    tamper(db, "DELETE FROM audit_head")
    assert verify(db)[0] is False
    with open_store(db) as store, pytest.raises(StoreError, match="audit_head"):
        store.record_audit("trace", "r", {}, T0)


def test_a_file_at_the_previous_schema_is_chained_when_it_opens(tmp_path: Path) -> None:
    # SQLite-only: a file written by an older doorscan, before the chain existed.
    path = tmp_path / "hub.db"
    raw = sqlite3.connect(path)
    for migration in SqliteStore.MIGRATIONS[:3]:
        for statement in migration:
            assert isinstance(statement, str)
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 3")
    for i in range(3):
        raw.execute(
            "INSERT INTO audit (at_ms, action, reason, params_json) VALUES (?, 'trace', ?, '{}')",
            (1628994600000 + i, f"old {i}"),
        )
    raw.commit()
    raw.close()

    with open_store(path) as store:
        # Chained (schema 4), then the clear reasons sealed and the chain hashed again
        # (schema 9), which an entry of its own records with the head from before.
        migrated = store.audit_entries(1)[0]
        assert store.verify_audit().entries == 4
        store.record_audit("visitors", "new", {}, T0)
        check = store.verify_audit()
        oldest = store.audit_entries()[-1]
    assert (migrated.action, migrated.params["entries_rewritten"]) == ("audit-migration", 3)
    assert len(migrated.params["previous_head"]) == 64
    assert (check.ok, check.entries) == (True, 5)
    assert (oldest.reason, oldest.prev_hash) == ("old 0", GENESIS_HASH)
    stored = [r for (r,) in raw_sql(str(path), "SELECT reason FROM audit ORDER BY id")]
    assert not any(r.startswith("old") for r in stored)
    tamper(str(path), "UPDATE audit SET reason = 'rewritten' WHERE id = 2")
    assert verify(str(path))[:2] == (False, 2)


def test_an_empty_log_verifies(hub_db: str) -> None:
    with open_store(hub_db) as store:
        check = store.verify_audit()
    assert (check.ok, check.entries, check.head_hash) == (True, 0, GENESIS_HASH)


def test_cli_verify_and_list(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("audit log intact: 6 entries")

    assert main(["audit", "list", "--db", db, "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 audit entries (newest first)"
    # Vietnam time by default (02:35 UTC is 09:35 in Pleiku); UTC with --utc.
    assert lines[2].split()[:3] == ["6", "2021-08-15T09:35:00.000+07:00", "trace"]
    assert "ca F0 số 5" in lines[2] and "ca F0 số 3" not in "\n".join(lines)
    assert main(["audit", "list", "--db", db, "--limit", "1", "--action", "trace", "--utc"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[1] == "2021-08-15T02:35:00.000Z"

    tamper(db, "UPDATE audit SET reason = 'x' WHERE id = 5")
    assert main(["audit", "verify", "--db", db]) == 1
    out = capsys.readouterr().out
    assert out.startswith("audit log BROKEN at entry 5: its contents do not match its hash")
    assert "4 entries check good" in out

    assert main(["audit", "verify", "--db", str(tmp_path / "none.db")]) == 2
    assert main(["audit", "list", "--db", db, "--limit", "0"]) == 2
