"""Operators' passwords and tokens (`hub.auth`): hashing, the token lifecycle, what is stored."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from doorscan.errors import Refusal
from doorscan.localbroker import LocalBroker, free_port
from doorscan.wire import VenueRecord
from hub.access import Channel, Principal, Role
from hub.auth import (
    SESSION_HOURS,
    User,
    authenticate,
    create_user,
    hash_password,
    hash_token,
    issue_api_token,
    login,
    logout,
    verify_password,
)
from hub.cli import main
from hub.store import HubStore, UserExists
from tests.hubstore import open_store
from tests.waiting import wait_for

NOW = datetime(2021, 8, 20, 8, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        yield opened


def test_password_hash_is_salted_self_describing_and_verifies() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second  # a fresh salt each time
    scheme, n, r, p, _salt, _key = first.split("$")
    # OWASP's password storage cheat sheet: scrypt N=2^14, r=8, p=5 (or an equal set).
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "5")
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + " ", first)
    assert not verify_password(PASSWORD, "not a hash")
    assert not verify_password(PASSWORD, "bcrypt$1$2$3$AAAA$AAAA")


def test_a_login_rehashes_a_password_kept_at_an_older_cost(store: HubStore) -> None:
    create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    # As an older doorscan stored it: scrypt N=2^14, r=8, p=1.
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    store.set_password_hash("ytepleiku", old)
    assert login(store, "ytepleiku", "wrong password!!", NOW) is None
    assert store.user("ytepleiku").password_hash == old  # type: ignore[union-attr]
    assert login(store, "ytepleiku", PASSWORD, NOW) is not None
    rehashed = store.user("ytepleiku").password_hash  # type: ignore[union-attr]
    assert rehashed.split("$")[1:4] == ["16384", "8", "5"]
    assert verify_password(PASSWORD, rehashed)


def test_login_gives_a_session_that_authenticates_as_the_user(store: HubStore) -> None:
    user = create_user(store, "ytepleiku", "Y tế  Pleiku", Role.TRACER, None, PASSWORD, NOW)
    assert user == User("ytepleiku", "Y tế Pleiku", Role.TRACER, None)
    issued = login(store, "ytepleiku", PASSWORD, NOW)
    assert issued is not None and issued.user == user
    assert issued.expires_at == NOW + timedelta(hours=SESSION_HOURS)
    assert authenticate(store, issued.token, NOW) == user
    assert user.principal(Channel.API, "10.0.0.7") == Principal(
        Role.TRACER, account="ytepleiku", channel=Channel.API, address="10.0.0.7"
    )


def test_wrong_password_and_unknown_user_get_nothing(store: HubStore) -> None:
    create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    assert login(store, "ytepleiku", "wrong password here", NOW) is None
    assert login(store, "nobody", PASSWORD, NOW) is None
    assert login(store, "Not An Id!", PASSWORD, NOW) is None
    assert login(store, "ytepleiku", PASSWORD, NOW) is not None  # control


def test_session_expires_after_12_hours(store: HubStore) -> None:
    create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    issued = login(store, "ytepleiku", PASSWORD, NOW)
    assert issued is not None
    last_ok = NOW + timedelta(hours=SESSION_HOURS) - timedelta(milliseconds=1)
    assert authenticate(store, issued.token, last_ok) is not None
    assert authenticate(store, issued.token, NOW + timedelta(hours=SESSION_HOURS)) is None


def test_api_token_lives_its_days_and_logout_revokes(store: HubStore) -> None:
    create_user(store, "bot", "Script", Role.REPORTER, None, PASSWORD, NOW)
    issued = issue_api_token(store, "bot", 90, NOW)
    assert issued.expires_at == NOW + timedelta(days=90)
    assert authenticate(store, issued.token, NOW + timedelta(days=89)) is not None
    assert authenticate(store, issued.token, NOW + timedelta(days=90)) is None
    other = issue_api_token(store, "bot", 90, NOW)
    bot = other.user.principal(Channel.API, "10.0.0.7")
    logout(store, other.token, NOW, bot)
    assert authenticate(store, other.token, NOW) is None
    logout(store, other.token, NOW, bot)  # twice is harmless
    logout(store, "never issued", NOW, bot)
    assert authenticate(store, issued.token, NOW) is not None  # the other token still works
    with pytest.raises(Refusal, match="days"):
        issue_api_token(store, "bot", 0, NOW)
    with pytest.raises(Refusal, match="no user"):
        issue_api_token(store, "ghost", 10, NOW)


def test_inactive_user_can_neither_log_in_nor_use_a_token(store: HubStore) -> None:
    create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    issued = login(store, "ytepleiku", PASSWORD, NOW)
    assert issued is not None and authenticate(store, issued.token, NOW) is not None
    assert store.set_user_active("ytepleiku", False)
    assert authenticate(store, issued.token, NOW) is None
    assert login(store, "ytepleiku", PASSWORD, NOW) is None
    with pytest.raises(Refusal, match="disabled"):
        issue_api_token(store, "ytepleiku", 10, NOW)
    store.set_user_active("ytepleiku", True)
    assert authenticate(store, issued.token, NOW) is not None  # control: the same token again


def test_garbage_tokens_are_refused(store: HubStore) -> None:
    for token in ("", "x", "a" * 10_000, "ünïcode"):
        assert authenticate(store, token, NOW) is None


def test_user_rules(store: HubStore) -> None:
    with pytest.raises(Refusal, match="not a user id"):
        create_user(store, "Bad Id", "X", Role.ADMIN, None, PASSWORD, NOW)
    with pytest.raises(Refusal, match="needs the venue"):
        create_user(store, "owner", "X", Role.VENUE, None, PASSWORD, NOW)
    with pytest.raises(Refusal, match="no venue 'nowhere'"):
        create_user(store, "owner", "X", Role.VENUE, "nowhere", PASSWORD, NOW)
    with pytest.raises(Refusal, match="give no venue"):
        create_user(store, "admin", "X", Role.ADMIN, "cho-pleiku", PASSWORD, NOW)
    with pytest.raises(Refusal, match="at least"):
        create_user(store, "admin", "X", Role.ADMIN, None, "short", NOW)
    owner = create_user(store, "owner", "Chủ chợ", Role.VENUE, "cho-pleiku", PASSWORD, NOW)
    assert owner.principal(Channel.WEB, None).venue_id == "cho-pleiku"
    with pytest.raises(UserExists):
        create_user(store, "owner", "Again", Role.ADMIN, None, PASSWORD, NOW)
    assert [u.user_id for u in store.users()] == ["owner"]


def test_a_copy_of_the_database_holds_no_password_or_token(tmp_path: Path) -> None:
    # SQLite-only: it reads the bytes of a copy of the file and its -wal and -shm.
    store = open_store(tmp_path / "hub.db")
    create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    session = login(store, "ytepleiku", PASSWORD, NOW)
    api = issue_api_token(store, "ytepleiku", 30, NOW)
    assert session is not None
    store.close()
    copy = tmp_path / "copy.db"
    shutil.copy(tmp_path / "hub.db", copy)
    for suffix in ("-wal", "-shm"):
        if (tmp_path / f"hub.db{suffix}").exists():
            shutil.copy(tmp_path / f"hub.db{suffix}", tmp_path / f"copy.db{suffix}")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("copy.db*"))
    for secret in (PASSWORD, session.token, api.token):
        assert secret.encode() not in raw
    # What the file does hold: the hashes, which are no use as tokens.
    conn = sqlite3.connect(copy)
    try:
        hashes = [row[0] for row in conn.execute("SELECT token_hash FROM tokens")]
        (password_hash,) = conn.execute("SELECT password_hash FROM users").fetchone()
    finally:
        conn.close()
    assert sorted(hashes) == sorted([hash_token(session.token), hash_token(api.token)])
    assert password_hash.startswith("scrypt$")
    with open_store(copy) as opened:
        assert all(authenticate(opened, stored, NOW) is None for stored in hashes)
        assert authenticate(opened, api.token, NOW) is not None  # control: the real token works


# -- command line: user add, token create, web, serve --http ---------------------------------


def _with_a_venue(db: str) -> str:
    with open_store(db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
    return db


def test_cli_user_add_and_token_create(
    hub_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _with_a_venue(hub_db)
    secret = tmp_path / "pw.txt"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    base = ["--db", db]
    add = ["user", "add", *base, "--id", "ytepleiku", "--name", "Y tế Pleiku", "--role", "tracer"]
    assert main([*add, "--password-file", str(secret)]) == 0
    assert "user ytepleiku added: tracer" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    owner = ["user", "add", *base, "--id", "owner", "--name", "Chủ chợ", "--role", "venue"]
    assert main([*owner, "--venue", "cho-pleiku", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["token", "create", *base, "--user", "ytepleiku", "--days", "7"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert "not shown again" in out.err and token not in out.err
    with open_store(db) as store:
        user = authenticate(store, token, datetime.now(UTC))
        assert user is not None and user.user_id == "ytepleiku"
        assert login(store, "owner", PASSWORD, NOW) is not None  # the stdin password, no newline
        assert authenticate(store, token, datetime.now(UTC) + timedelta(days=7, minutes=1)) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["user", "add", "--id", "x", "--name", "X", "--role", "venue"], "needs the venue"),
        (["user", "add", "--id", "ytepleiku", "--name", "X", "--role", "admin"], "exists"),
        (["user", "add", "--id", "Bad Id", "--name", "X", "--role", "admin"], "not a user id"),
        (["token", "create", "--user", "ghost"], "no user 'ghost'"),
        (["token", "create", "--user", "ytepleiku", "--days", "0"], "days must be"),
        (["user", "disable", "--id", "ghost"], "no user 'ghost'"),
    ],
)
def test_cli_refusals_are_one_line(
    hub_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    db = _with_a_venue(hub_db)
    with open_store(db) as store:
        create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
    secret = tmp_path / "pw.txt"
    secret.write_text(PASSWORD, encoding="utf-8")
    extra = ["--password-file", str(secret)] if argv[:2] == ["user", "add"] else []
    assert main([*argv[:2], "--db", db, *argv[2:], *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_user_disable_stops_its_tokens(hub_db: str) -> None:
    db = _with_a_venue(hub_db)
    with open_store(db) as store:
        create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
        token = issue_api_token(store, "ytepleiku", 30, NOW).token
    assert main(["user", "disable", "--db", db, "--id", "ytepleiku"]) == 0
    with open_store(db) as store:
        assert authenticate(store, token, NOW) is None


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> str:
    assert wait_for(lambda: text in log.read_text() or proc.poll() is not None, 60)
    output = log.read_text()
    assert text in output, output
    return output


def _child(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output, output
    return output


def _me(port: int, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"http://127.0.0.1:{port}/api/v1/me", headers=headers, timeout=10)


def test_cli_web_serves_the_api_and_stops_on_sigterm(hub_db: str, tmp_path: Path) -> None:
    db = _with_a_venue(hub_db)
    with open_store(db) as store:
        create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
        token = issue_api_token(store, "ytepleiku", 30, datetime.now(UTC)).token
    port, log = free_port(), tmp_path / "web.log"
    proc = _child(["web", "--db", db, "--http", f"127.0.0.1:{port}"], log)
    try:
        _wait_for_line(log, "hub web ready", proc)
        assert _me(port, token).json()["user_id"] == "ytepleiku"
        assert _me(port, "wrong").status_code == 401
    finally:
        _stop(proc, log)


@pytest.mark.broker
def test_cli_serve_runs_ingest_and_web_in_one_process(
    hub_db: str, broker: LocalBroker, tmp_path: Path
) -> None:
    db = _with_a_venue(hub_db)
    with open_store(db) as store:
        create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None, PASSWORD, NOW)
        token = issue_api_token(store, "ytepleiku", 30, datetime.now(UTC)).token
    port, log = free_port(), tmp_path / "serve.log"
    args = ["serve", "--db", db, "--broker-host", broker.host]
    args += ["--broker-port", str(broker.port), "--http", f"127.0.0.1:{port}"]
    proc = _child(args, log)
    try:
        ready = _wait_for_line(log, "hub ready", proc)
        assert f"http=127.0.0.1:{port}" in ready
        assert _me(port, token).status_code == 200
    finally:
        output = _stop(proc, log)
    assert "hub stopped" in output
    with pytest.raises(httpx.ConnectError):
        _me(port, token)  # the web server went with the process
