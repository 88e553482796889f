"""Fixtures shared by the whole suite: a real Mosquitto per test, synthetic people."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from doorscan.localbroker import LocalBroker, find_mosquitto


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    """A real Mosquitto on a free loopback port, owned by this test (kill it, restart it)."""
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; `make test` installs it (apt-get install mosquitto)"
        )
    with LocalBroker() as running:
        yield running
