"""The login throttle: five failures lock a user id for the rest of the window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from hub.access import Role
from hub.auth import create_user
from hub.login_throttle import LoginThrottle
from hub.web.app import create_app
from tests.hubstore import open_store

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
ORIGIN = "http://testserver"  # the TestClient's own origin: a same-site form post


def test_five_failures_lock_the_user_until_the_first_ages_out() -> None:
    throttle = LoginThrottle(per_user=5, window=timedelta(minutes=15))
    for minute in range(5):
        assert throttle.retry_after("tracer", "10.0.0.1", T0 + timedelta(minutes=minute)) == 0
        throttle.failed("tracer", "10.0.0.1", T0 + timedelta(minutes=minute))
    now = T0 + timedelta(minutes=5)
    # The first failure (T0) leaves the window at T0 + 15 min: 10 minutes from now.
    assert throttle.retry_after("tracer", "10.0.0.1", now) == 600
    # The lock is on the user id, from any address, and whatever the case of the id.
    assert throttle.retry_after("TRACER", "10.9.9.9", now) == 600
    assert throttle.retry_after("someone-else", "10.9.9.9", now) == 0
    assert throttle.retry_after("tracer", "10.0.0.1", T0 + timedelta(minutes=15)) == 0


def test_a_good_password_clears_the_user_but_not_the_address() -> None:
    throttle = LoginThrottle(per_user=3, per_address=4)
    for _ in range(3):
        throttle.failed("tracer", "10.0.0.1", T0)
    assert throttle.retry_after("tracer", "10.0.0.1", T0) > 0
    throttle.succeeded("tracer", "10.0.0.1")
    assert throttle.retry_after("tracer", "10.0.0.2", T0) == 0
    # One more failure from 10.0.0.1 under another name reaches the address's limit.
    throttle.failed("guess", "10.0.0.1", T0)
    assert throttle.retry_after("admin", "10.0.0.1", T0) > 0
    assert throttle.retry_after("admin", "10.0.0.2", T0) == 0


def test_memory_stays_bounded_under_made_up_user_ids() -> None:
    throttle = LoginThrottle(max_tracked=100)
    for n in range(10_000):
        throttle.failed(f"user-{n}", "10.0.0.1", T0)
    assert len(throttle._failures) <= 100
    # The address is the most recent key and survives the pruning.
    assert throttle.retry_after("anyone", "10.0.0.1", T0) > 0


# -- through the real app, on a real store -----------------------------------------------------

PASSWORD = "a long passphrase for the tracer"


@pytest.fixture
def client(hub_db: str) -> Iterator[TestClient]:
    with open_store(hub_db) as store:
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
