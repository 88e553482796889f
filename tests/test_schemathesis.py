"""Schemathesis against the hub's OpenAPI document: no generated request gets a 5xx.

The app runs in process (ASGI) on a real store with venues and scans, and every request
carries a tracer's API token, so the identity reads are exercised past authentication
(a request without one stops at the 401). Every operation of the document is covered,
including the reports and pages routers when they are there. Examples per operation
are few, to keep the run near a minute; the CI job can raise ``DOORSCAN_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI, Response
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err

from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import VenueRecord
from hub.access import Role
from hub.auth import create_user, issue_api_token
from hub.store import StoredScan
from hub.web.app import create_app
from tests.hubstore import open_store

NOW = datetime(2021, 8, 15, 12, 0, tzinfo=UTC)
EXAMPLES = int(os.environ.get("DOORSCAN_FUZZ_EXAMPLES", "20"))


@pytest.fixture
def hub_app(hub_db: str) -> Iterator[tuple[Any, str]]:
    people = [parse_qr(cccd_text(p), today=date(2022, 1, 15)) for p in make_people(6, seed=5)]
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.insert_scans(
            [
                StoredScan(f"s-{n}", None, "cho-pleiku", NOW - timedelta(minutes=n), True, p, "csv")
                for n, p in enumerate(people)
            ],
            received_at=NOW,
        )
        create_user(store, "fuzz", "Fuzz tracer", Role.TRACER, None, "a long fuzz password", NOW)
        token = issue_api_token(store, "fuzz", 1, NOW).token
        yield create_app(store, now=lambda: NOW), token


def server_errors(app: Any, headers: dict[str, str], examples: int) -> tuple[list[str], list[str]]:
    """Run every operation of `app`'s document; return (operations run, failures).

    Hypothesis is driven directly, one operation at a time, rather than through
    schemathesis' pytest plugin: its lazy loader reaches into a private attribute that
    pytest 9 no longer has.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran: list[str] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the document is invalid: {result.err()}")
            continue
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples every run: a CI failure reproduces locally
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        try:
            run()
        except (Exception, FailureGroup) as exc:  # the app raised, or a check failed
            failures.append(f"{operation.label}: {exc}")
        ran.append(operation.label)
    return ran, failures


def test_no_server_error(hub_app: tuple[Any, str]) -> None:
    app, token = hub_app
    ran, failures = server_errors(app, {"Authorization": f"Bearer {token}"}, EXAMPLES)
    assert "POST /api/v1/trace" in ran and "POST /api/v1/people/timeline" in ran
    print(f"{len(ran)} operations, {EXAMPLES} examples each: {', '.join(ran)}")
    assert failures == []


def test_the_check_finds_a_server_error() -> None:
    """The control: the same harness on an app that fails on some input reports it."""
    broken = FastAPI(title="broken")

    @broken.get("/half")
    def half(n: int) -> Response:
        return Response(status_code=500 if n % 2 == 0 else 200)

    @broken.get("/crash")
    def crash(n: int) -> dict[str, float]:
        return {"x": 1 / (n % 2)}  # raises on even n: the in-process client re-raises it

    ran, failures = server_errors(broken, {}, 20)
    assert ran == ["GET /half", "GET /crash"]
    assert len(failures) == 2
    assert "Server error" in failures[0] and "division by zero" in failures[1]
