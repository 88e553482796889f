"""Roles at the hub (`hub.access`): who may read what, what a venue sees masked, the audit."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator

import pytest

from doorscan.errors import Refusal
from doorscan.wire import VenueRecord
from hub.access import (
    AccessControlledStore,
    Channel,
    Forbidden,
    Principal,
    PrincipalError,
    Role,
    TraceQuestion,
    mask_id_number,
    mask_name,
)
from hub.cli import main
from hub.store import HubStore, StoredScan
from tests.access_data import (
    AT,
    FULL_IDS,
    FULL_NAMES,
    HOSPITAL,
    MARKET,
    MIN,
    SINCE,
    UNTIL,
    VISITS,
    A,
    B,
    D,
    H,
    P,
    U,
    principal,
)
from tests.hubstore import open_store


def _fill(store: HubStore) -> None:
    store.upsert_venue(VenueRecord(venue_id=MARKET, name="Chợ Pleiku"))
    store.upsert_venue(VenueRecord(venue_id=HOSPITAL, name="Bệnh viện tỉnh"))
    store.insert_scans(
        [
            StoredScan(f"scan-{n:04d}", None, venue, at, True, who, "csv")
            for n, (who, venue, at) in enumerate(VISITS)
        ],
        received_at=AT,
    )


@pytest.fixture
def db(hub_db: str) -> str:
    with open_store(hub_db) as store:
        _fill(store)
    return hub_db


@pytest.fixture
def store(db: str) -> Iterator[HubStore]:
    with open_store(db) as opened:
        yield opened


def reader(store: HubStore, role: Role, venue_id: str | None = None) -> AccessControlledStore:
    return AccessControlledStore(store, principal(role, venue_id))


def visitors(r: AccessControlledStore, venue_id: str = MARKET) -> list[tuple[str, str, str]]:
    listing = r.visitors(venue_id, SINCE, UNTIL, "kiểm tra ca F0 số 12", AT)
    return [(v.kind, v.id_number, v.name) for v in listing.visitors]


def trace(r: AccessControlledStore) -> list[tuple[int, str, str]]:
    result = r.trace(TraceQuestion(A.id_number, SINCE, UNTIL, 60 * MIN, 2), "ca F0 số 12", AT)
    return [(c.degree, c.id_number, c.name) for c in result.contacts]


# -- masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("Nguyễn Văn An", "Nguyễn Văn***"),
        ("Rơ Châm H'Hen", "Rơ Châm***"),
        ("NGUYỄN THỊ MAI", "NGUYỄN THỊ***"),
        ("NGUYEN VAN AN", "NGUYEN VAN***"),  # a health QR's name: upper case, no diacritics
        ("Tôn Nữ Thị Ánh Tuyết", "Tôn Nữ Thị Ánh***"),
        ("Ksor", "K***"),
        ("Ánh", "Á***"),
        (unicodedata.normalize("NFD", "Ánh"), "Á***"),  # decomposed input, composed output
        (unicodedata.normalize("NFD", "Đặng Thị Hường"), "Đặng Thị***"),
        ("  Lê   Thị  Hồng ", "Lê Thị***"),
        ("", "***"),
    ],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("001090123456", "0010901*****"),  # a CCCD
        ("******123456", "******1*****"),  # a health QR's masked SoGiayTo stays masked
        ("0123456789", "0123456***"),  # 2666's own example
        ("123456789", "123456***"),  # an old CMND: at least 3 characters masked
        ("B1234567", "B1234***"),  # a passport
        ("7K3M9P2QXA", "7K3M9P2***"),  # a visitor card id
        ("AB1", "***"),
    ],
)
def test_mask_id_number(number: str, masked: str) -> None:
    assert mask_id_number(number) == masked
    assert len(mask_id_number(number)) == len(number)


def test_principal_validation() -> None:
    with pytest.raises(PrincipalError):
        principal(Role.VENUE)
    with pytest.raises(PrincipalError):
        principal(Role.VENUE, "  ")
    for role in (Role.TRACER, Role.REPORTER, Role.ADMIN):
        with pytest.raises(PrincipalError):
            principal(role, MARKET)
    with pytest.raises(PrincipalError, match="names its account"):
        principal(Role.TRACER, account=" ")
    owner = Principal(
        Role.VENUE, MARKET, account="chu-cho", channel=Channel.WEB, address="10.0.0.9"
    )
    assert owner.to_audit() == {
        "role": "venue",
        "venue_id": MARKET,
        "account": "chu-cho",
        "channel": "web",
        "address": "10.0.0.9",
    }


# -- what each role may read ---------------------------------------------------------------


def test_tracer_sees_full_identities_and_is_audited(store: HubStore) -> None:
    r = reader(store, Role.TRACER)
    assert visitors(r) == [
        ("cccd", A.id_number, A.name),
        ("cccd", B.id_number, "Rơ Châm H'Hen"),
        ("health", H.id_number, H.name),
        ("cccd", U.id_number, "NGUYỄN THỊ MAI"),
    ]
    assert [(d, i) for d, i, _ in trace(r)] == [
        (1, B.id_number),
        (1, H.id_number),
        (1, U.id_number),
        (2, D.id_number),
    ]
    assert {n for *_, n in trace(r)} == {B.name, H.name, U.name, D.name}
    entries = store.audit_entries()  # newest first
    assert [e.action for e in entries] == ["trace", "trace", "visitors"]
    for entry in entries:
        assert entry.params["principal"] == principal(Role.TRACER).to_audit()
    assert entries[-1].params["masked"] is False
    assert entries[0].params["subject"] == store.pseudonym(A.person_key)
    assert entries[0].reason == "ca F0 số 12"


def test_venue_sees_its_own_venue_masked(store: HubStore) -> None:
    listing = reader(store, Role.VENUE, MARKET).visitors(MARKET, SINCE, UNTIL, "kiểm tra", AT)
    assert listing.masked
    assert [(v.kind, v.id_number, v.name) for v in listing.visitors] == [
        ("cccd", A.id_number[:7] + "*****", A.name.rsplit(" ", 1)[0] + "***"),
        ("cccd", B.id_number[:7] + "*****", "Rơ Châm***"),
        ("health", "******" + P[2].id_number[6] + "*****", H.name.rsplit(" ", 1)[0] + "***"),
        ("cccd", U.id_number[:7] + "*****", "NGUYỄN THỊ***"),
    ]
    shown = repr(listing)
    assert not any(name in shown for name in FULL_NAMES)
    assert not any(number in shown for number in FULL_IDS)
    [entry] = store.audit_entries()
    assert (entry.action, entry.reason) == ("visitors", "kiểm tra")
    assert entry.params["principal"] == principal(Role.VENUE, MARKET).to_audit()
    assert entry.params["masked"] is True


def test_venue_is_refused_another_venue_and_trace(store: HubStore) -> None:
    r = reader(store, Role.VENUE, MARKET)
    with pytest.raises(Forbidden, match="own venue"):
        visitors(r, HOSPITAL)
    # An unknown venue is refused the same way: a venue owner cannot probe which ids exist.
    with pytest.raises(Forbidden):
        visitors(r, "khong-co")
    with pytest.raises(Forbidden, match="may not trace"):
        trace(r)
    refused = store.audit_entries()[::-1]  # oldest first
    assert [(e.action, e.params["attempted"]) for e in refused] == [
        ("refused", "visitors"),
        ("refused", "visitors"),
        ("refused", "trace"),
    ]
    assert [e.params.get("venue_id") for e in refused[:2]] == [HOSPITAL, "khong-co"]
    assert all(e.params["principal"] == principal(Role.VENUE, MARKET).to_audit() for e in refused)
    # Whom it tried to trace, by pseudonym: no identity in the log.
    assert refused[2].params["subject"] == store.pseudonym(f"id:{A.id_number}")
    logged = repr([e.params for e in refused])
    assert A.id_number not in logged and A.name not in logged
    assert store.verify_audit().ok


@pytest.mark.parametrize("role", [Role.REPORTER, Role.ADMIN])
def test_reporter_and_admin_get_no_identities(store: HubStore, role: Role) -> None:
    r = reader(store, role)
    with pytest.raises(Forbidden) as refused:
        visitors(r)
    assert isinstance(refused.value, PermissionError)
    with pytest.raises(Forbidden):
        trace(r)
    entries = store.audit_entries()
    assert [e.params["attempted"] for e in entries[::-1]] == ["visitors", "trace"]
    assert {e.params["principal"]["role"] for e in entries} == {str(role)}


@pytest.mark.parametrize(
    ("role", "venue_id"),
    [(Role.TRACER, None), (Role.VENUE, MARKET), (Role.REPORTER, None), (Role.ADMIN, None)],
)
def test_counts_for_every_role(store: HubStore, role: Role, venue_id: str | None) -> None:
    counts = reader(store, role, venue_id).counts()
    assert (counts["scans"], counts["people"], counts["venues"]) == (len(VISITS), 5, 2)
    assert store.audit_entries() == []  # counts read no identity


def test_venue_registry_reads(store: HubStore) -> None:
    assert [v.venue_id for v in reader(store, Role.ADMIN).venues()] == [HOSPITAL, MARKET]
    assert [v.venue_id for v in reader(store, Role.VENUE, HOSPITAL).venues()] == [HOSPITAL]


def test_bad_requests_are_refused_before_the_audit(store: HubStore) -> None:
    r = reader(store, Role.VENUE, "chua-dang-ky")  # its own venue, never registered
    with pytest.raises(Refusal, match="unknown venue"):
        visitors(r, "chua-dang-ky")
    with pytest.raises(Refusal, match="reason"):
        reader(store, Role.TRACER).visitors(MARKET, SINCE, UNTIL, "  ", AT)
    with pytest.raises(Refusal, match="since"):
        reader(store, Role.TRACER).visitors(MARKET, UNTIL, SINCE, "x", AT)
    assert store.audit_entries() == []


# -- the command line ----------------------------------------------------------------------

CLI_PERIOD = ["--since", "2021-08-15T00:00:00+07:00", "--until", "2021-08-16T00:00:00+07:00"]


def cli_visitors(db: str, venue: str, *extra: str) -> list[str]:
    return ["visitors", "--db", db, "--venue", venue, *CLI_PERIOD, "--reason", "kiểm tra", *extra]


def test_cli_venue_role_masks(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = cli_visitors(db, MARKET, "--role", "venue", "--as-venue", MARKET, "--format", "json")
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["masked"] is True
    assert [(v["name"], v["id_number"]) for v in data["visitors"]] == [
        (A.name.rsplit(" ", 1)[0] + "***", A.id_number[:7] + "*****"),
        ("Rơ Châm***", B.id_number[:7] + "*****"),
        (H.name.rsplit(" ", 1)[0] + "***", "******" + P[2].id_number[6] + "*****"),
        ("NGUYỄN THỊ***", U.id_number[:7] + "*****"),
    ]
    assert main(cli_visitors(db, MARKET, "--role", "venue", "--as-venue", MARKET)) == 0
    table = capsys.readouterr().out
    assert "masked" in table and "Rơ Châm***" in table and B.id_number not in table
    with open_store(db) as store:
        principals = [e.params["principal"] for e in store.audit_entries()]
    assert all(p["role"] == "venue" and p["venue_id"] == MARKET for p in principals)
    # The command line names the operating-system user that ran it.
    assert all(p["channel"] == "cli" and p["account"].startswith("os:") for p in principals)
    assert len(principals) == 2


def test_cli_default_role_is_tracer(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli_visitors(db, MARKET, "--format", "json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["masked"] is False
    assert [v["name"] for v in data["visitors"]] == [A.name, B.name, H.name, U.name]


@pytest.mark.parametrize(
    "argv_tail",
    [
        ["visitors", HOSPITAL, "--role", "venue", "--as-venue", MARKET],
        ["visitors", MARKET, "--role", "reporter"],
        ["visitors", MARKET, "--role", "admin"],
        ["trace", "--role", "venue", "--as-venue", MARKET],
        ["trace", "--role", "reporter"],
    ],
)
def test_cli_refusal_exits_3(
    db: str, capsys: pytest.CaptureFixture[str], argv_tail: list[str]
) -> None:
    command, *rest = argv_tail
    if command == "visitors":
        argv = cli_visitors(db, rest[0], *rest[1:])
    else:
        argv = ["trace", "--db", db, "--id", A.id_number, *CLI_PERIOD, "--reason", "x", *rest]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"doorscan-hub {command}: not allowed: ")
    assert captured.err.count("\n") == 1
    with open_store(db) as store:
        [entry] = store.audit_entries()
        assert (entry.action, entry.params["attempted"]) == ("refused", command)


@pytest.mark.parametrize(
    "extra", [["--role", "venue"], ["--role", "tracer", "--as-venue", MARKET], ["--role", "boss"]]
)
def test_cli_bad_role_options_exit_2(
    db: str, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert main(cli_visitors(db, MARKET, *extra)) == 2
    assert "--role" in capsys.readouterr().err
