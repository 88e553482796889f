"""Fixtures shared by the whole suite: a real Mosquitto per test, the hub's vault key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from doorscan.localbroker import LocalBroker, find_mosquitto
from hub.vault import ENV_VAULT_KEY
from tests.hubdb import BACKENDS, pg_schema_url, sqlite_locator
from tests.hubstore import vault_key_file
from tests.reliability import FiguresRecorder

_FIGURES = FiguresRecorder()


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    """A real Mosquitto on a free loopback port, owned by this test (kill it, restart it)."""
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; `make test` installs it (apt-get install mosquitto)"
        )
    with LocalBroker() as running:
        yield running


@pytest.fixture(params=BACKENDS)
def hub_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The hub database, as a locator for `open_store` and ``--db``: once per backend."""
    if request.param == "sqlite":
        yield sqlite_locator(tmp_path)
    else:
        yield from pg_schema_url()


@pytest.fixture(autouse=True)
def _hub_vault_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `hub` command a test runs, in process or as a child, opens the run's vault.

    The same key as `tests.hubstore.open_store`, so a file written by either opens in
    the other. Tests of the missing-key refusal delete the variable themselves.
    """
    monkeypatch.setenv(ENV_VAULT_KEY, str(vault_key_file()))


@pytest.fixture(scope="session")
def reliability_figures() -> FiguresRecorder:
    """Record what a fault test did; the table in docs/reliability.md is made from it."""
    return _FIGURES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only a run whose tests passed may speak for the promise in docs/reliability.md.
    if exitstatus == 0:
        _FIGURES.write()
