"""The people and visits the access-layer and API tests share (tests/test_access.py,
tests/test_api.py): five synthetic people, two venues, one F1 and one F2 of A.

Names are chosen to exercise masking: an apostrophe ("Rơ Châm H'Hen"), capitals
("NGUYỄN THỊ MAI"), and a health QR whose number is masked (keyed by QID).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

from doorscan.payloads import Identity, parse_qr
from doorscan.synthetic import cccd_text, health_text, make_people
from hub.access import AccessControlledStore, Channel, Principal, Role, TraceQuestion
from hub.store import HubStore
from hub.trace import TraceResult

TODAY = date(2022, 1, 15)
P = make_people(5, seed=11)
A = parse_qr(cccd_text(P[0]), today=TODAY)
B = parse_qr(cccd_text(dataclasses.replace(P[1], name="Rơ Châm H'Hen")), today=TODAY)
H = parse_qr(health_text(P[2], masked=True), today=TODAY)  # keyed by QID, number masked
U = parse_qr(cccd_text(dataclasses.replace(P[3], name="NGUYỄN THỊ MAI")), today=TODAY)
D = parse_qr(cccd_text(P[4]), today=TODAY)
T0 = datetime(2021, 8, 15, 3, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SINCE, UNTIL = T0 - 60 * MIN, T0 + 600 * MIN
AT = T0 + 700 * MIN
MARKET, HOSPITAL = "cho-pleiku", "benh-vien"
VISITS: list[tuple[Identity, str, datetime]] = [
    (A, MARKET, T0),
    (B, MARKET, T0 + 10 * MIN),
    (H, MARKET, T0 + 20 * MIN),
    (U, MARKET, T0 + 30 * MIN),
    (B, HOSPITAL, T0 + 120 * MIN),
    (D, HOSPITAL, T0 + 150 * MIN),  # F2 of A through B
]
FULL_NAMES = {A.name, B.name, H.name, U.name, D.name}
FULL_IDS = {A.id_number, B.id_number, U.id_number, D.id_number}


def principal(role: Role, venue_id: str | None = None, account: str = "tester") -> Principal:
    """A principal as the command line makes one (tests name the account themselves)."""
    return Principal(role, venue_id, account=account, channel=Channel.CLI)


def traced(
    store: HubStore,
    id_text: str,
    since: datetime,
    until: datetime,
    window: timedelta,
    depth: int,
    reason: str,
    at: datetime,
) -> TraceResult:
    """A trace as a tracer on the command line runs it: checked, audited, through hub.access."""
    reader = AccessControlledStore(store, principal(Role.TRACER))
    return reader.trace(TraceQuestion(id_text, since, until, window, depth), reason, at)
