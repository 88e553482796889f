"""Anchored audit: a truncated and re-hashed log passes the chain check but not its anchors.

Everything through the documented commands (``doorscan-hub audit keygen|anchor|verify``)
on both backends; the tampering is done in SQL behind the hub's back, as a database
owner would: delete or edit entries, hash the chain again, fix ``audit_head``.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.access import AccessControlledStore, Role
from hub.audit import GENESIS_HASH, Anchor, entry_hash
from hub.cli import main
from tests.access_data import principal
from tests.hubdb import raw_sql
from tests.hubstore import open_store, vault_key_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def _entries(db: str, count: int) -> None:
    """`count` audited events: the refused reads of a curious reporter."""
    with open_store(db) as store:
        reader = AccessControlledStore(store, principal(Role.REPORTER, account="curious"))
        for n in range(count):
            with pytest.raises(PermissionError):
                reader.visitors("cho-pleiku", T0, T0 + timedelta(hours=1), f"probe {n}", T0)


def _rehash(db: str) -> None:
    """What a database owner does after editing the log: every hash and the head again."""
    prev, last, count = GENESIS_HASH, None, 0
    cols = "id, at_ms, action, reason, params_json"
    for id_, at_ms, action, reason, params in raw_sql(db, f"SELECT {cols} FROM audit ORDER BY id"):
        digest = entry_hash(id_, at_ms, action, reason, params, prev)
        raw_sql(db, "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", prev, digest, id_)
        prev, last, count = digest, id_, count + 1
    raw_sql(
        db,
        "UPDATE audit_head SET last_id = ?, last_hash = ?, entries = ? WHERE one_row = 1",
        last,
        prev,
        count,
    )


@pytest.fixture
def anchored(hub_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, Path]:
    key, anchors = tmp_path / "audit.key", tmp_path / "anchors.jsonl"
    assert main(["audit", "keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    _entries(hub_db, 6)
    assert main(["audit", "anchor", "--db", hub_db, "--key", str(key), "--out", str(anchors)]) == 0
    _entries(hub_db, 4)
    assert main(["audit", "anchor", "--db", hub_db, "--key", str(key), "--out", str(anchors)]) == 0
    printed = capsys.readouterr().out
    lines = anchors.read_text().splitlines()
    assert len(lines) == 2
    assert all(f"audit anchor {line}" in printed for line in lines)  # the journal's copy
    # Each anchor names the whole chain at its moment (6, then 10 entries).
    assert [Anchor.from_line(line).entries for line in lines] == [6, 10]
    return hub_db, tmp_path


def _verify(db: str, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, int, str]:
    """Exit codes of ``audit verify`` without and with ``--anchors``, and the latter's text."""
    plain = main(["audit", "verify", "--db", db])
    capsys.readouterr()
    args = ["audit", "verify", "--db", db, "--anchors", str(tmp / "anchors.jsonl")]
    code = main([*args, "--anchor-key", str(tmp / "audit.key.pub")])
    return plain, code, capsys.readouterr().out


def test_an_untouched_log_holds_against_its_anchors(
    anchored: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, tmp = anchored
    _entries(db, 3)  # written after the newest anchor: fine, the next anchor covers them
    assert _verify(db, tmp, capsys) == (0, 0, _intact_line(db))


def _intact_line(db: str) -> str:
    with open_store(db) as store:
        check = store.verify_audit()
    return f"audit log intact: {check.entries} entries (head {check.head_hash}), 2 anchors hold\n"


def test_truncation_plus_rehash_passes_the_chain_but_fails_the_anchors(
    anchored: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, tmp = anchored
    raw_sql(db, "DELETE FROM audit WHERE id > 7")
    _rehash(db)
    plain, code, text = _verify(db, tmp, capsys)
    assert plain == 0  # the chain alone cannot see it: this is why anchors exist
    assert code == 1
    assert "anchor 2" in text and "saw 10 entries; the log has 7" in text


def test_an_edit_plus_rehash_fails_the_anchors(
    anchored: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, tmp = anchored
    raw_sql(db, "UPDATE audit SET params_json = '{}' WHERE id = 2")
    _rehash(db)
    plain, code, text = _verify(db, tmp, capsys)
    assert (plain, code) == (0, 1)
    assert re.search(r"entry 6 no longer has the hash anchor 1 \(.*\) recorded", text)


def test_a_forged_or_foreign_anchor_is_refused(
    anchored: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, tmp = anchored
    anchors = tmp / "anchors.jsonl"
    first = anchors.read_text().splitlines()[0]
    anchors.write_text(first.replace('"entries":6', '"entries":5') + "\n")
    assert _verify(db, tmp, capsys)[1:] == (
        1,
        "audit log BROKEN: anchor 1 (" + Anchor.from_line(first).at + ") has a bad signature\n",
    )
    other = tmp / "other.key"
    assert main(["audit", "keygen", str(other)]) == 0
    args = ["audit", "verify", "--db", db, "--anchors", str(anchors)]
    assert main([*args, "--anchor-key", str(tmp / "other.key.pub")]) == 1
    assert "signed by unknown key" in capsys.readouterr().out


def test_only_an_admin_may_anchor(hub_db: str, tmp_path: Path) -> None:
    assert main(["audit", "keygen", str(tmp_path / "k")]) == 0
    from doorscan.ed25519keys import Ed25519Signer

    signer = Ed25519Signer.from_pem_file(tmp_path / "k")
    with open_store(hub_db) as store:
        reader = AccessControlledStore(store, principal(Role.TRACER, account="t"))
        with pytest.raises(PermissionError, match="anchor the audit log"):
            reader.audit_anchor(signer, T0)


def test_the_timer_runs_the_documented_command(
    hub_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy/doorscan-hub-anchor.service's ExecStart with the starter hub.toml that
    install-hub.sh installs, their paths moved into tmp_path."""
    service = (DEPLOY / "doorscan-hub-anchor.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*?[^\\])$", service, flags=re.M | re.S)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1).replace("\\\n", " "))
    assert argv[0].endswith("/doorscan-hub") and argv[1:3] == ["audit", "anchor"]
    assert main(["audit", "keygen", str(tmp_path / "audit.key")]) == 0
    config = (DEPLOY / "hub.toml.example").read_text(encoding="utf-8")
    config = config.replace('"/var/lib/doorscan-hub/hub.db"', json.dumps(hub_db))
    config = config.replace('"/etc/doorscan-hub/hub-vault.key"', json.dumps(str(vault_key_file())))
    (tmp_path / "hub.toml").write_text(config, encoding="utf-8")
    moved = {
        "/etc/doorscan-hub/hub.toml": str(tmp_path / "hub.toml"),
        "/etc/doorscan-hub/audit.key": str(tmp_path / "audit.key"),
        "/var/lib/doorscan-hub-anchors/anchors.jsonl": str(tmp_path / "anchors.jsonl"),
    }
    _entries(hub_db, 1)
    assert main([moved.get(arg, arg) for arg in argv[1:]]) == 0
    assert (tmp_path / "anchors.jsonl").read_text().count("\n") == 1
    assert "[Timer]" in (DEPLOY / "doorscan-hub-anchor.timer").read_text()
    capsys.readouterr()
