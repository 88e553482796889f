"""Issue 4: a stolen unit reveals no identity; sealing on real decoder, SQLite, Mosquitto."""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from gpiozero.pins.mock import MockFactory

from device.clock import ManualClock
from device.config import BrokerConfig, FramesConfig, SyncConfig, UnitConfig, load_config
from device.debounce import Debounce
from device.indicators import Feedback
from device.unit import Unit
from doorscan.errors import Refusal
from doorscan.localbroker import LocalBroker
from doorscan.sealing import (
    SealingError,
    generate_key,
    load_private_key,
    load_public_key,
    open_sealed,
    save_private_key,
    save_public_key,
    seal,
)
from doorscan.synthetic import Person, cccd_text, make_people, render_frame
from doorscan.wire import (
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_scans,
)
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import HubStore
from provisioning.cli import main as prov_main
from tests.hubstore import open_store
from tests.waiting import wait_for

T0 = datetime(2022, 1, 10, 2, 0, tzinfo=UTC)
PEOPLE = make_people(100, seed=404)
CLOCKS: dict[int, ManualClock] = {}
TEXT = "064090123456||Nguyễn Thị Ánh Tuyết|01021990|Nữ|Thôn Plei Ơi, Chư Păh, Gia Lai|17092021"


@pytest.fixture(scope="module")
def hub_key() -> X25519PrivateKey:
    return generate_key()


def _unit(tmp_path: Path, key: X25519PrivateKey | None, port: int = 1883) -> Unit:
    """A real unit; its hand-moved scan clock is in CLOCKS."""
    seal_key = None
    if key is not None:
        seal_key = tmp_path / "hub-seal.pub"
        save_public_key(key.public_key(), seal_key)
    config = UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        debounce_s=600,
        seal_key=seal_key,
        broker=BrokerConfig(port=port),
        frames=FramesConfig(source="files", path=tmp_path),
        sync=SyncConfig(batch_size=20, ack_timeout_s=5),
    )
    clock = ManualClock(T0)
    unit = Unit(config, clock=clock, pin_factory=MockFactory())
    CLOCKS[id(unit)] = clock
    return unit


def _show(unit: Unit, people: list[Person]) -> None:
    for person in people:
        CLOCKS[id(unit)].advance(10)
        [outcome] = unit.scanner.process(render_frame(cccd_text(person)))
        # Recorded either way; which light depends on whether the broker link is up just now.
        assert outcome.feedback in (Feedback.ACCEPTED, Feedback.RECORDED_OFFLINE), outcome.reason
        assert outcome.scan is not None


def _leaks(data_dir: Path, people: list[Person]) -> list[str]:
    """Every name or ID number of `people` found in any file under `data_dir`."""
    found = []
    blobs = {p.name: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert "journal.db" in blobs and "state.json" in blobs
    for person in people:
        needles = {
            person.id_number.encode(),
            person.name.encode("utf-8"),
            unicodedata.normalize("NFD", person.name).encode("utf-8"),
            person.name.upper().encode("utf-8"),
        }
        found += [f"{n!r} in {f}" for f, blob in blobs.items() for n in needles if n in blob]
    return found


def test_seal_round_trip_and_keys_on_disk(tmp_path: Path, hub_key: X25519PrivateKey) -> None:
    save_private_key(hub_key, tmp_path / "hub-seal.key")
    save_public_key(hub_key.public_key(), tmp_path / "hub-seal.pub")
    assert (tmp_path / "hub-seal.key").stat().st_mode & 0o777 == 0o600
    sealed = seal(TEXT, load_public_key(tmp_path / "hub-seal.pub"))
    assert "Nguy" not in sealed and "064090123456" not in sealed
    assert open_sealed(sealed, load_private_key(tmp_path / "hub-seal.key")) == TEXT
    # A fresh ephemeral key each time: the same card does not give the same blob twice.
    assert seal(TEXT, hub_key.public_key()) != seal(TEXT, hub_key.public_key())


def test_a_damaged_or_foreign_seal_does_not_open(hub_key: X25519PrivateKey) -> None:
    sealed = seal(TEXT, hub_key.public_key())
    raw = bytearray(sealed.encode())
    for at in (0, 5, 60, len(raw) - 2):
        flipped = raw.copy()
        flipped[at] = ord("A") if flipped[at] != ord("A") else ord("B")
        with pytest.raises(SealingError) as refused:
            open_sealed(flipped.decode(), hub_key)
        assert isinstance(refused.value, Refusal) and refused.value.code == "unsealable"
    for bad in (sealed[:-5], "not base64!", "AA"):
        with pytest.raises(SealingError):
            open_sealed(bad, hub_key)
    with pytest.raises(SealingError):
        open_sealed(sealed, generate_key())


def test_debounce_keeps_no_person_key() -> None:
    debounce = Debounce(300, lambda: 0.0, key=b"k" * 32)
    debounce.mark("id:064090123456")
    assert debounce.is_recent("id:064090123456") and not debounce.is_recent("id:064090123457")
    assert all(isinstance(k, bytes) and b"0640" not in k for k in debounce._marks)


def test_a_stolen_units_files_name_nobody(tmp_path: Path, hub_key: X25519PrivateKey) -> None:
    with _unit(tmp_path, hub_key) as unit:
        _show(unit, PEOPLE)
        unit.housekeeping()  # state.json written while the journal is open (WAL present)
        assert (unit.config.data_dir / "journal.db-wal").exists()
        assert _leaks(unit.config.data_dir, PEOPLE) == []
        pending = unit.journal.pending(200)
    assert _leaks(tmp_path / "data", PEOPLE) == []
    # The journal does hold all 100 scans, and the hub's key gives back the exact texts.
    assert len(pending) == 100 and all(s.qr_text is None and s.kind == "cccd" for s in pending)
    opened = sorted(open_sealed(s.sealed or "", hub_key) for s in pending)
    assert opened == sorted(cccd_text(p) for p in PEOPLE)


def test_an_unsealed_unit_would_leak(tmp_path: Path) -> None:
    # The check above can fail: without a seal key the same files name the visitors.
    with _unit(tmp_path, None) as unit:
        _show(unit, PEOPLE[:3])
    assert len(_leaks(tmp_path / "data", PEOPLE[:3])) >= 6


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        opened.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        yield opened


@pytest.mark.broker
def test_sealed_scans_reach_the_hub_and_trace(
    broker: LocalBroker, store: HubStore, tmp_path: Path, hub_key: X25519PrivateKey
) -> None:
    ingestor = Ingestor(store, now=lambda: T0.replace(hour=3), sealing_key=hub_key)
    with (
        HubService(ingestor, broker.host, broker.port).start() as hub,
        _unit(tmp_path, hub_key, broker.port).start() as unit,
    ):
        assert hub.wait_connected(10) and unit.sync.wait_connected(10)
        _show(unit, PEOPLE[:5])
        assert wait_for(lambda: unit.journal.backlog() == 0, 20)
    assert store.counts()["scans"] == 5 and store.dead_letters() == []
    for person in PEOPLE[:5]:
        [checkin] = store.checkins_of(person.person_key, 0, 2**62)
        assert (checkin.id_number, checkin.name, checkin.kind) == (
            person.id_number,
            unicodedata.normalize("NFC", person.name),
            "cccd",
        )


def test_a_hub_without_the_right_key_refuses_sealed_scans(
    store: HubStore, hub_key: X25519PrivateKey
) -> None:
    scan = Scan(
        scan_id="sealed-0001",
        venue_id="hospital",
        scanned_at=T0,
        sealed=seal(cccd_text(PEOPLE[0]), hub_key.public_key()),
        kind="cccd",
    )
    # A hub without a key cannot take it now (the unit keeps it and sends it again once
    # the hub has its key); a hub with another key can never open it.
    hubs = (Ingestor(store, now=lambda: T0), Ingestor(store, sealing_key=generate_key()))
    answers = []
    for n, ingestor in enumerate(hubs):
        batch = ScanBatch(
            batch_id=f"batch-000{n}", unit_id="door-1", sent_at=T0, scans=[scan], rev=6
        )
        [reply] = ingestor.handle(topic_scans("door-1"), encode_message(batch))
        ack = decode_message(reply.payload, Ack)
        assert ack.stored == []
        answers += [(r.scan_id, r.code, r.retry) for r in ack.refused]
    assert answers == [("sealed-0001", "no_seal_key", True), ("sealed-0001", "unsealable", None)]
    assert {d.code for d in store.dead_letters()} == {"unsealable"}
    assert store.counts()["scans"] == 0


def test_provisioning_gives_units_the_public_key_and_keeps_the_private(tmp_path: Path) -> None:
    home = tmp_path / "fleet"
    assert prov_main(["--home", str(home), "init"]) == 0
    private = load_private_key(home / "keys" / "hub-seal.key")
    assert stat.S_IMODE((home / "keys" / "hub-seal.key").stat().st_mode) == 0o600
    assert prov_main(["--home", str(home), "add-venue", "--id", "hospital", "--name", "H"]) == 0
    add = ["add-device", "--id", "door-1", "--venue", "hospital", "--data-dir", "data"]
    assert prov_main(["--home", str(home), *add, "--broker-host", "127.0.0.1"]) == 0
    config = load_config(home / "units" / "door-1.json")
    assert config.seal_key == home / "units" / "hub-seal.pub"
    assert open_sealed(seal(TEXT, load_public_key(config.seal_key)), private) == TEXT
    assert not (home / "units" / "hub-seal.key").exists()
    # `init --force` replaces the sealing pair with the card keys; without it, nothing changes.
    assert prov_main(["--home", str(home), "init"]) == 1
    assert load_private_key(home / "keys" / "hub-seal.key").private_bytes_raw() == (
        private.private_bytes_raw()
    )
    assert prov_main(["--home", str(home), "init", "--force"]) == 0
    assert load_private_key(home / "keys" / "hub-seal.key").private_bytes_raw() != (
        private.private_bytes_raw()
    )
