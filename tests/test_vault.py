"""Identities at rest on the hub: the vault, the sealed store, and the bytes on disk.

The promise (hub/vault.py): a copy of the hub's database files, without the vault key,
holds no name and no ID number, while the hub, with the key, reads and traces exactly
as before. The strongest test reads every byte of the files for every form of every
name; a control shows that the same search finds them where they were written in the
clear, so a search that finds nothing means something.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import stat
import unicodedata
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doorscan.payloads import parse_qr
from doorscan.synthetic import Person, cccd_text, health_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import Scan, ScanBatch, UnitRecord, VenueRecord, encode_message, topic_scans
from hub.access import AccessControlledStore, Role, TraceQuestion
from hub.cli import main
from hub.ingest import Ingestor
from hub.scan_ids import csv_scan_id
from hub.store import SqliteStore, StoredScan, StoreError
from hub.store.factory import is_postgres, open_hub_store
from hub.vault import ENV_VAULT_KEY, SealedDataError, Vault, VaultKeyError
from tests.access_data import principal, traced
from tests.hubdb import raw_sql
from tests.hubstore import TEST_VAULT, open_store

NOW = datetime(2022, 1, 11, 9, 0, tzinfo=UTC)
TODAY = date(2022, 1, 11)
DAY = datetime(2022, 1, 10, tzinfo=UTC)
VENUES = ["bv-pleiku", "cho-ia-kha", "ubnd-chu-pah"]
PEOPLE = make_people(100, seed=404)


# -- what a leak looks like ----------------------------------------------------------------


def _forms(person: Person) -> list[str]:
    """Every way the person's name could sit in a file, then the ID number.

    The first is the health QR's form, plain capitals without diacritics.
    """
    plain = unicodedata.normalize("NFD", person.name.replace("Đ", "D").replace("đ", "d"))
    capitals = "".join(c for c in plain if unicodedata.category(c) != "Mn").upper()
    names = {person.name, person.name.upper()}
    forms = {unicodedata.normalize(nf, n) for n in names for nf in ("NFC", "NFD")}
    return [capitals, *sorted(forms - {capitals}), person.id_number]


def leaks(files: Iterable[Path], people: list[Person]) -> list[str]:
    """Each name form or ID number found, in UTF-8, in any byte of the files that exist."""
    blobs = [f.read_bytes() for f in files if f.exists()]
    return [
        f"{form!r} of {person.id_number}"
        for person in people
        for form in _forms(person)
        if any(form.encode("utf-8") in blob for blob in blobs)
    ]


def db_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def test_the_leak_search_finds_what_was_written_in_the_clear(tmp_path: Path) -> None:
    """The control: the search of the tests below can fail."""
    clear = tmp_path / "clear.db"
    raw = sqlite3.connect(clear)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("CREATE TABLE t (text TEXT)")
    raw.executemany("INSERT INTO t VALUES (?)", [(cccd_text(p),) for p in PEOPLE[:5]])
    raw.executemany("INSERT INTO t VALUES (?)", [(health_text(p),) for p in PEOPLE[5:10]])
    raw.commit()
    found = set(leaks(db_files(clear), PEOPLE[:10]))  # the rows are still in the WAL
    raw.close()
    for n, person in enumerate(PEOPLE[:10]):
        assert f"{person.id_number!r} of {person.id_number}" in found
        # The CCCD carries the name as written, the health QR in plain capitals.
        name = person.name if n < 5 else _forms(person)[0]
        assert f"{unicodedata.normalize('NFC', name)!r} of {person.id_number}" in found
    assert leaks([clear], PEOPLE[10:]) == []  # and does not find who is not there


# -- the vault itself ----------------------------------------------------------------------


def test_seal_and_open_round_trip_and_bind_to_the_row() -> None:
    vault = Vault.generate()
    blob = vault.seal("Nguyễn Văn An".encode(), b"scan:1")
    assert vault.open(blob, b"scan:1").decode() == "Nguyễn Văn An"
    assert "Nguyễn".encode() not in blob
    assert vault.seal(b"same", b"a") != vault.seal(b"same", b"a")  # a fresh nonce each time
    with pytest.raises(SealedDataError):
        vault.open(blob, b"scan:2")  # the same blob in another row
    with pytest.raises(SealedDataError):
        Vault.generate().open(blob, b"scan:1")  # another key
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(SealedDataError):
        vault.open(bytes(damaged), b"scan:1")
    with pytest.raises(SealedDataError):
        vault.open(b"\x02" + blob[1:], b"scan:1")  # an unknown version


def test_blind_is_deterministic_keyed_and_names_its_scheme() -> None:
    one, other = Vault.generate(), Vault.generate()
    key = "id:064090123456"
    assert one.blind(key) == one.blind(key)
    assert one.blind(key) != one.blind("id:064090123457")
    assert one.blind(key) != other.blind(key)
    assert one.blind(key).startswith("pk1:") and "064090123456" not in one.blind(key)
    assert one.check_value() == Vault(one._secret).check_value() != other.check_value()
    assert "secret" in repr(one) and one._secret.hex() not in repr(one)


def test_the_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "hub-vault.key"
    vault = Vault.generate()
    vault.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Vault.load(path).blind("id:1") == vault.blind("id:1")
    with pytest.raises(VaultKeyError, match="refusing to overwrite"):
        Vault.generate().save(path)
    assert Vault.load(path).blind("id:1") == vault.blind("id:1")  # the first key survives
    assert [p.name for p in tmp_path.iterdir()] == ["hub-vault.key"]  # no temp file left

    path.chmod(0o644)
    with pytest.raises(VaultKeyError, match="readable by others"):
        Vault.load(path)
    path.chmod(0o600)
    with pytest.raises(VaultKeyError, match="no vault key"):
        Vault.load(tmp_path / "missing.key")
    for body in ("", "doorscan-hub-vault v1\nnot base64!\n", "something else\nAAAA\n"):
        bad = tmp_path / f"bad-{len(body)}.key"
        bad.write_text(body)
        bad.chmod(0o600)
        with pytest.raises(VaultKeyError):
            Vault.load(bad)
    short = tmp_path / "short.key"
    short.write_text("doorscan-hub-vault v1\nAAAA\n")
    short.chmod(0o600)
    with pytest.raises(VaultKeyError, match="3 bytes"):
        Vault.load(short)


# -- the store with its vault --------------------------------------------------------------


def _scan(n: int, person: Person, venue: str, at: datetime) -> StoredScan:
    identity = parse_qr(cccd_text(person), today=TODAY)
    return StoredScan(f"scan-{n:04d}", None, venue, at, True, identity, "mqtt")


def _two_scans(path: str) -> None:
    with open_store(path) as store:
        store.upsert_venue(VenueRecord(venue_id="v", name="v"))
        store.insert_scans(
            [_scan(1, PEOPLE[0], "v", DAY), _scan(2, PEOPLE[1], "v", DAY + timedelta(minutes=5))],
            received_at=NOW,
        )


def test_a_database_opens_only_with_its_own_vault(hub_db: str) -> None:
    path = hub_db
    _two_scans(path)
    with pytest.raises(StoreError, match="written with another vault key"):
        open_hub_store(path, vault=Vault.generate())
    with open_store(path) as store:  # the refusal changed nothing
        assert [c.name for c in store.checkins_at("v", 0, 2**62)] == [
            PEOPLE[0].name,
            PEOPLE[1].name,
        ]


def test_an_identity_moved_to_another_row_does_not_open(hub_db: str) -> None:
    path = hub_db
    _two_scans(path)
    ((blob,),) = raw_sql(path, "SELECT identity FROM scans WHERE scan_id = 'scan-0001'")
    raw_sql(path, "UPDATE scans SET identity = ? WHERE scan_id = 'scan-0002'", blob)
    with open_store(path) as store, pytest.raises(StoreError, match="scan:scan-0002"):
        store.checkins_at("v", 0, 2**62)


def test_rows_hold_pseudonyms_and_sealed_identities_only(hub_db: str) -> None:
    path = hub_db
    _two_scans(path)
    rows = raw_sql(path, "SELECT person_key, kind, identity FROM scans ORDER BY scan_id")
    for (key, kind, sealed), person in zip(rows, PEOPLE[:2], strict=True):
        assert key == TEST_VAULT.blind(person.person_key)
        assert kind == "cccd"
        assert person.id_number.encode() not in bytes(sealed)
    if not is_postgres(path):
        # A SQLite file keeps the clear columns of before the vault (SQLite could not
        # drop them then); they stay empty. PostgreSQL's scans table never had them.
        clear = raw_sql(
            path, "SELECT id_number, name, birth_date, sex, address FROM scans ORDER BY scan_id"
        )
        assert clear == [("", "", None, None, None)] * 2
    with open_store(path) as store:
        assert store.person(PEOPLE[1].person_key) == (PEOPLE[1].id_number, PEOPLE[1].name)
        assert [c.scan_id for c in store.checkins_of(PEOPLE[0].person_key, 0, 2**62)] == [
            "scan-0001"
        ]
        assert store.counts()["people"] == 2


# -- the bytes on disk after a day of ingest, a trace and a visitor list -------------------


def test_no_name_or_id_number_reaches_the_hub_files(tmp_path: Path) -> None:
    # SQLite-only: it searches the bytes of the database file and its -wal and -shm.
    db = tmp_path / "hub.db"
    units = {venue: f"{venue}-door-1" for venue in VENUES}
    with open_store(db) as store:
        for venue, unit in units.items():
            store.upsert_venue(VenueRecord(venue_id=venue, name=venue))
            store.upsert_unit(UnitRecord(unit_id=unit, venue_id=venue))
        ingestor = Ingestor(store, now=lambda: NOW)
        for n, person in enumerate(PEOPLE):
            venue = VENUES[n % 3]
            text = health_text(person) if n % 5 == 0 else cccd_text(person)
            at = DAY + timedelta(minutes=7 * n)
            scan = Scan(scan_id=f"scan-{n:04d}", venue_id=venue, scanned_at=at, qr_text=text)
            batch = ScanBatch(
                batch_id=f"batch-{n:04d}", unit_id=units[venue], sent_at=NOW, scans=[scan]
            )
            assert ingestor.handle(topic_scans(units[venue]), encode_message(batch)) is not None
        # Dead letters holding clear QR texts: a batch spoilt by a byte that is not UTF-8
        # (kept whole, byte for byte) and a scan for another unit's venue (kept alone).
        stray = Scan(
            scan_id="scan-stray", venue_id=VENUES[0], scanned_at=DAY, qr_text=cccd_text(PEOPLE[0])
        )
        whole = ScanBatch(batch_id="batch-stray", unit_id="nobody", sent_at=NOW, scans=[stray])
        ingestor.handle(topic_scans("nobody"), encode_message(whole) + b"\xff")
        wrong = stray.model_copy(update={"scan_id": "scan-wrong", "venue_id": VENUES[1]})
        mixed = ScanBatch(
            batch_id="batch-wrong", unit_id=units[VENUES[0]], sent_at=NOW, scans=[wrong]
        )
        ingestor.handle(topic_scans(units[VENUES[0]]), encode_message(mixed))
        assert ingestor.counters.scans_stored == 100
        assert ingestor.counters.dead_letters == 2

        tracer = AccessControlledStore(store, principal(Role.TRACER))
        asked = TraceQuestion(
            PEOPLE[3].id_number, DAY, DAY + timedelta(days=1), timedelta(hours=1), 2
        )
        result = tracer.trace(asked, "ca 1", NOW)
        assert result.index.name == PEOPLE[3].name and result.contacts
        listing = tracer.visitors(VENUES[0], DAY, DAY + timedelta(days=1), "kiểm tra", NOW)
        assert PEOPLE[3].name in {v.name for v in listing.visitors}
        letters = store.dead_letters()
        assert any(cccd_text(PEOPLE[0]).encode() in letter.payload for letter in letters)
        entry = store.audit_entries()[1]  # the trace, before the visitor list
        assert entry.params["subject"] == store.pseudonym(PEOPLE[3].person_key)
        assert leaks(db_files(db), PEOPLE) == []  # while open: the WAL holds the day
    assert leaks(db_files(db), PEOPLE) == []


# -- a file from before the vault ----------------------------------------------------------


MIGRATED = 80


def _version_4_file(path: Path) -> tuple[str, str]:
    """A file as the previous doorscan left it: clear identities, a dead letter, a trace.

    Returns the scan ids of its MQTT row and its imported row.
    """
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = WAL")
    for migration in SqliteStore.MIGRATIONS[:3]:
        for statement in migration:
            assert isinstance(statement, str)
            raw.execute(statement)
    raw.execute("INSERT INTO venues (venue_id, name) VALUES ('v', 'Chợ'), ('w', 'Bệnh viện')")
    rows = []
    # Two rows to follow at venue v; many more at venue w, so the table spans many pages.
    people = [(PEOPLE[0], "mqtt", "v"), (PEOPLE[1], "csv", "v")]
    people += [(person, "mqtt", "w") for person in PEOPLE[3:MIGRATED]]
    for n, (person, source, venue) in enumerate(people):
        who = parse_qr(cccd_text(person), today=TODAY)
        at_ms = to_ms(DAY + timedelta(minutes=10 * n))
        # The previous doorscan's imported scan id: an unkeyed hash of the person key.
        old_digest = hashlib.sha256(f"v\x1f{at_ms}\x1f{who.person_key}".encode()).hexdigest()
        old_csv_id = "csv-" + old_digest[:32]
        scan_id = old_csv_id if source == "csv" else f"scan-{n:04d}"
        rows.append(scan_id)
        raw.execute(
            "INSERT INTO scans (scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, "
            "person_key, kind, id_number, name, birth_date, sex, address, source, "
            "received_at_ms) VALUES (?, NULL, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (scan_id, venue, at_ms, who.person_key, who.kind, who.id_number, who.name,
             who.birth_date, who.sex, who.address, source, to_ms(NOW)),
        )  # fmt: skip
    raw.execute(
        "INSERT INTO dead_letters (received_at_ms, source, topic, payload, code, reason) "
        "VALUES (?, 'mqtt', 'doorscan/v1/units/x/scans', ?, 'unknown_unit', 'unit x')",
        (to_ms(NOW), cccd_text(PEOPLE[2]).encode()),
    )
    raw.execute(
        "INSERT INTO audit (at_ms, action, reason, params_json) VALUES (?, 'trace', 'ca 1', ?)",
        (to_ms(NOW), f'{{"id": "{PEOPLE[0].id_number}", "person_key": "{PEOPLE[0].person_key}"}}'),
    )
    for step in SqliteStore.MIGRATIONS[3]:
        if isinstance(step, str):
            raw.execute(step)
        else:
            step(raw, TEST_VAULT)
    raw.execute("PRAGMA user_version = 4")
    raw.commit()
    raw.close()
    return rows[0], rows[1]


def test_a_version_4_file_is_sealed_when_it_opens(tmp_path: Path) -> None:
    # SQLite-only: migrating a file an older doorscan wrote, and its bytes on disk.
    db = tmp_path / "hub.db"
    mqtt_id, old_csv_id = _version_4_file(db)
    assert len(leaks(db_files(db), PEOPLE[:MIGRATED])) >= MIGRATED  # the control: it leaks

    with open_store(db) as store:
        checkins = store.checkins_at("v", 0, 2**62)
        assert [(c.name, c.id_number) for c in checkins] == [
            (PEOPLE[0].name, PEOPLE[0].id_number),
            (PEOPLE[1].name, PEOPLE[1].id_number),
        ]
        new_csv_id = csv_scan_id("v", checkins[1].at_ms, store.pseudonym(PEOPLE[1].person_key))
        assert [c.scan_id for c in checkins] == [mqtt_id, new_csv_id] and new_csv_id != old_csv_id
        assert store.person(PEOPLE[0].person_key) == (PEOPLE[0].id_number, PEOPLE[0].name)
        [letter] = store.dead_letters()
        assert (letter.payload, letter.reason) == (cccd_text(PEOPLE[2]).encode(), "unit x")
        # The old trace entry names its subject by pseudonym now; the chain still holds,
        # and a new entry says the hub rewrote it, from which head.
        assert store.verify_audit().ok
        # (Then schema 9 seals the old trace's clear reason and says so in an entry too.)
        sealing, migration, trace = store.audit_entries()
        assert trace.params == {"subject": store.pseudonym(PEOPLE[0].person_key)}
        assert migration.action == "vault-migration"
        assert migration.params["entries_rewritten"] == 1
        assert (sealing.action, sealing.params["entries_rewritten"]) == ("audit-migration", 1)
        traced(store, PEOPLE[0].id_number, DAY, NOW, timedelta(hours=1), 1, "ca 2", NOW)
        assert [c.id_number for c in store.checkins_of(PEOPLE[1].person_key, 0, 2**62)] == [
            PEOPLE[1].id_number
        ]
    assert leaks(db_files(db), PEOPLE[:MIGRATED]) == []
    with open_store(db) as store:  # opens again, unchanged
        assert len(store.checkins_at("v", 0, 2**62)) == 2
        assert len(store.checkins_at("w", 0, 2**62)) == MIGRATED - 3
    with pytest.raises(StoreError, match="another vault key"):
        SqliteStore(db, vault=Vault.generate())


# -- the command line ----------------------------------------------------------------------


def test_init_vault_and_the_commands_that_need_it(
    hub_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "keys" / "hub-vault.key"
    key.parent.mkdir()
    assert main(["init-vault", str(key)]) == 0
    out = capsys.readouterr().out
    assert str(key) in out and "back it up" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = Vault.load(key).check_value()
    assert main(["init-vault", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert Vault.load(key).check_value() == first

    db = hub_db
    open_hub_store(db, vault=Vault.load(key)).close()
    monkeypatch.delenv(ENV_VAULT_KEY)
    assert main(["stats", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "no vault key" in err and "--vault-key" in err and "Traceback" not in err
    assert main(["stats", "--db", db, "--vault-key", str(key)]) == 0
    assert '"scans": 0' in capsys.readouterr().out
    monkeypatch.setenv(ENV_VAULT_KEY, str(key))
    assert main(["stats", "--db", db]) == 0
    capsys.readouterr()
    other = tmp_path / "other.key"
    Vault.generate().save(other)
    assert main(["stats", "--db", db, "--vault-key", str(other)]) == 2
    assert "written with another vault key" in capsys.readouterr().err
    key.chmod(0o640)
    assert main(["stats", "--db", db]) == 2
    assert "chmod 600" in capsys.readouterr().err


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_pseudonym_is_the_rfc4648_base32_of_the_keyed_hash(person_key: str) -> None:
    """The quick encoder writes exactly what the stdlib's base32 writes, so pseudonyms
    stored by earlier hubs still match."""
    vault = Vault(b"\x07" * 32)
    match_key = vault._match_key  # the pseudonym is defined on this key
    digest = hmac.new(match_key, person_key.encode("utf-8"), hashlib.sha256).digest()
    expected = "pk1:" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()
    assert vault.blind(person_key) == expected
