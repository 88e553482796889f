"""The login throttle: counted in the database, decided atomically, unlocked by an admin.

The unit tests use the throttle on a real store (SQLite and PostgreSQL). The outsider's
tests run the real uvicorn (`hub.web.server.WebThread`) and speak HTTP: a burst of 60
concurrent wrong passwords, ``X-Forwarded-For`` from a peer that is not a trusted
proxy, a restart, and the documented ``doorscan-hub user unlock``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from doorscan.localbroker import free_port
from hub.access import AccessControlledStore, AuditQuery, Role
from hub.auth import create_user
from hub.cli import main
from hub.login_throttle import LoginThrottle
from hub.store import HubStore
from hub.web.app import create_app
from hub.web.server import WebThread
from tests.access_data import principal
from tests.hubstore import open_store

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
ORIGIN = "http://testserver"  # the TestClient's own origin: a same-site form post
PASSWORD = "a long passphrase for the tracer"


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        yield opened


def _try(throttle: LoginThrottle, store: HubStore, user: str, address: str, at: datetime) -> float:
    """One wrong password's worth: reserve, and settle as failed; the wait if refused."""
    attempt = throttle.reserve(store, user, address, at)
    throttle.settle(store, attempt, ok=False)
    return attempt.wait_s


def test_five_failures_lock_the_user_until_the_first_ages_out(store: HubStore) -> None:
    throttle = LoginThrottle(per_user=5, window=timedelta(minutes=15))
    for minute in range(5):
        assert _try(throttle, store, "tracer", "10.0.0.1", T0 + timedelta(minutes=minute)) == 0
    now = T0 + timedelta(minutes=5)
    # The first failure (T0) leaves the window at T0 + 15 min: 10 minutes from now.
    assert _try(throttle, store, "tracer", "10.0.0.1", now) == 600
    # The lock is on the user id, from any address, and whatever the case of the id.
    assert _try(throttle, store, "TRACER", "10.9.9.9", now) == 600
    assert _try(throttle, store, "someone-else", "10.9.9.9", now) == 0
    assert _try(throttle, store, "tracer", "10.0.0.1", T0 + timedelta(minutes=15)) == 0


def test_a_good_password_clears_the_user_but_not_the_address(store: HubStore) -> None:
    throttle = LoginThrottle(per_user=3, per_address=5)
    for _ in range(3):
        _try(throttle, store, "tracer", "10.0.0.1", T0)
    locked = throttle.reserve(store, "tracer", "10.0.0.2", T0)
    assert locked.wait_s > 0
    # The right password (after the lock is lifted by an admin) clears the user's count.
    assert throttle.unlock(store, "tracer") == 3
    good = throttle.reserve(store, "tracer", "10.0.0.1", T0)
    throttle.settle(store, good, ok=True)
    assert _try(throttle, store, "tracer", "10.0.0.2", T0) == 0
    # 10.0.0.1 kept its 3 failures; 2 more under other names reach its limit of 5.
    _try(throttle, store, "guess", "10.0.0.1", T0)
    _try(throttle, store, "guess2", "10.0.0.1", T0)
    assert _try(throttle, store, "admin", "10.0.0.1", T0) > 0
    assert _try(throttle, store, "admin", "10.0.0.3", T0) == 0


def test_made_up_user_ids_do_not_push_a_locked_user_out(store: HubStore) -> None:
    throttle = LoginThrottle(per_user=5, per_address=100_000)
    for _ in range(5):
        _try(throttle, store, "tracer", "10.0.0.1", T0)
    for n in range(500):  # junk load: each id is its own key, none evicts another
        _try(throttle, store, f"user-{n}", f"10.1.{n // 250}.{n % 250}", T0)
    assert _try(throttle, store, "tracer", "10.0.0.1", T0) > 0


# -- through the app, on a real store -------------------------------------------------------


@pytest.fixture
def client(store: HubStore) -> Iterator[TestClient]:
    create_user(store, "tracer", "Y tế Pleiku", Role.TRACER, None, PASSWORD, T0)
    app = create_app(store, now=lambda: T0)
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def test_the_api_answers_429_after_five_wrong_passwords_even_for_the_right_one(
    client: TestClient,
) -> None:
    for _ in range(5):
        wrong = client.post("/api/v1/login", json={"user_id": "tracer", "password": "guess1234"})
        assert wrong.status_code == 401
    locked = client.post("/api/v1/login", json={"user_id": "tracer", "password": PASSWORD})
    assert locked.status_code == 429
    assert locked.json()["error"] == "too_many_logins"
    assert locked.headers["Retry-After"] == "900"  # the clock stands still at T0
    # Another user from the same address is not locked by the tracer's failures.
    other = client.post("/api/v1/login", json={"user_id": "nobody", "password": "guess1234"})
    assert other.status_code == 401


def test_the_login_page_says_to_wait_in_the_visitors_language(client: TestClient) -> None:
    form = {"user_id": "tracer", "password": "guess1234", "next": "/"}
    for _ in range(5):
        assert client.post("/login", data=form, headers={"Origin": ORIGIN}).status_code == 401
    good = {**form, "password": PASSWORD}
    page = client.post("/login", data=good, headers={"Origin": ORIGIN})
    assert page.status_code == 429
    assert "thử lại sau 15 phút" in page.text
    assert "doorscan_session" not in page.headers.get("set-cookie", "")


# -- the outsider's view: real uvicorn, HTTP only ---------------------------------------------


def _login(port: int, user_id: str, password: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/login",
        json={"user_id": user_id, "password": password},
        headers=headers,
        timeout=120,
    )
    return response.status_code


def _audit_count(store: HubStore, action: str) -> int:
    reader = AccessControlledStore(store, principal(Role.ADMIN))
    return len(reader.audit_log(10_000, datetime.now(UTC), AuditQuery(action=action)).entries)


@pytest.fixture
def served(store: HubStore) -> Iterator[tuple[HubStore, int]]:
    create_user(store, "tracer", "Y tế Pleiku", Role.TRACER, None, PASSWORD, T0)
    port = free_port()
    web = WebThread(store, ("127.0.0.1", port), metrics=None)
    try:
        assert web.wait_started(30)
        yield store, port
    finally:
        web.close()


def test_a_burst_of_60_concurrent_wrong_passwords_checks_at_most_the_limit(
    hub_db: str, served: tuple[HubStore, int]
) -> None:
    store, port = served
    # Half of the burst goes to a second web process on the same database (its own
    # store and connection), as behind a load balancer: the count is the database's.
    with open_store(hub_db) as second:
        other_port = free_port()
        web = WebThread(second, ("127.0.0.1", other_port), metrics=None)
        try:
            assert web.wait_started(30)
            ports = [port, other_port] * 30
            with ThreadPoolExecutor(max_workers=60) as pool:
                codes = list(pool.map(lambda p: _login(p, "tracer", "wrong guess 123"), ports))
        finally:
            web.close()
    # Every password that was checked is audited login_failed; the rest were refused
    # before any check (429, login_locked). The limit is 5 per user id.
    assert codes.count(401) == 5 and codes.count(429) == 55, codes
    assert _audit_count(store, "login_failed") == 5
    assert _audit_count(store, "login_locked") == 55
    # The right password is refused too until an admin unlocks (or the window passes).
    assert _login(port, "tracer", PASSWORD) == 429


def test_forwarded_for_from_an_untrusted_peer_is_ignored(served: tuple[HubStore, int]) -> None:
    _store, port = served
    # 30 failures per address: each claims another address, and under another user id.
    for n in range(30):
        assert _login(port, f"guess-{n}", "wrong guess 123", f"203.0.113.{n}") == 401
    # The peer (127.0.0.1) is what counted: a 31st try is refused whatever it claims.
    assert _login(port, "guess-x", "wrong guess 123", "198.51.100.7") == 429


def test_a_trusted_proxy_forwarded_address_is_used(store: HubStore) -> None:
    port = free_port()
    web = WebThread(store, ("127.0.0.1", port), metrics=None, trusted_proxies=["127.0.0.1"])
    try:
        assert web.wait_started(30)
        for n in range(31):  # each from its own forwarded address: none reaches 30
            assert _login(port, f"guess-{n}", "wrong guess 123", f"203.0.113.{n}") == 401
    finally:
        web.close()
    failed = AccessControlledStore(store, principal(Role.ADMIN)).audit_log(
        50, datetime.now(UTC), AuditQuery(action="login_failed")
    )
    assert {e.params["address"] for e in failed.entries} == {f"203.0.113.{n}" for n in range(31)}


def test_a_lock_survives_a_restart_and_an_admin_lifts_it(
    hub_db: str, served: tuple[HubStore, int], capsys: pytest.CaptureFixture[str]
) -> None:
    store, port = served
    for _ in range(5):
        assert _login(port, "tracer", "wrong guess 123") == 401
    with open_store(hub_db) as second:  # another web process on the same database
        other_port = free_port()
        web = WebThread(second, ("127.0.0.1", other_port), metrics=None)
        try:
            assert web.wait_started(30)
            assert _login(other_port, "tracer", PASSWORD) == 429
        finally:
            web.close()
    assert main(["user", "unlock", "--db", hub_db, "--id", "tracer"]) == 0
    assert "user tracer unlocked (5 failed logins forgotten)" in capsys.readouterr().out
    assert _login(port, "tracer", PASSWORD) == 200
    (entry,) = (
        AccessControlledStore(store, principal(Role.ADMIN))
        .audit_log(1, datetime.now(UTC), AuditQuery(action="unlock"))
        .entries
    )
    assert entry.params["account"] == "tracer"
    assert entry.params["principal"]["channel"] == "cli"
    assert entry.params["principal"]["account"].startswith("os:")


def test_eight_connections_reserving_at_once_never_pass_the_limit(hub_db: str) -> None:
    """Eight stores (eight database connections, as eight web processes) reserve the same
    user's attempt at the same instant, ten rounds: each round grants at most the limit.
    Without the serialising lock, PostgreSQL's READ COMMITTED lets every one of them count
    the same rows and pass."""
    throttle = LoginThrottle(per_user=5, per_address=1_000)
    stores = [open_store(hub_db) for _ in range(8)]
    try:
        for round_number in range(10):
            at = T0 + timedelta(hours=round_number)  # a fresh window each round
            barrier = threading.Barrier(len(stores))

            def reserve(
                store: HubStore, at: datetime = at, gate: threading.Barrier = barrier
            ) -> float:
                gate.wait(10)
                return throttle.reserve(store, "tracer", "10.0.0.1", at).wait_s

            with ThreadPoolExecutor(max_workers=len(stores)) as pool:
                waits = list(pool.map(reserve, stores))
            assert sum(1 for w in waits if w == 0) == 5, (round_number, waits)
    finally:
        for store in stores:
            store.close()
