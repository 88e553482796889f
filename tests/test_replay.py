"""Dead-letter replay: a hub fixed after a misconfiguration recovers what it refused.

The misconfiguration is the one that loses scans silently: a hub given another sealing
key than the fleet's dead-letters every sealed scan as ``unsealable`` while the doors
show green. The units' batches come in as the wire carries them (the hub's ingest, both
backends); the operator runs the documented command, ``doorscan-hub dead-letters replay``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from doorscan.sealing import generate_key, save_private_key, seal
from doorscan.synthetic import cccd_text, make_people
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
from hub.access import AccessControlledStore, AuditQuery, Role
from hub.cli import main
from hub.ingest import Ingestor
from hub.store import HubStore
from tests.access_data import principal
from tests.hubstore import open_store

PEOPLE = make_people(3, seed=71)
SENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def sealed_batch(n: int, public_key: object) -> ScanBatch:
    """Batch `n` of door-1 at the hospital: a sealed scan of each of `PEOPLE`."""
    scans = [
        Scan(
            scan_id=f"sealed-{n}-{i:04d}",
            venue_id="hospital",
            scanned_at=SENT + timedelta(minutes=i),
            sealed=seal(cccd_text(person), public_key),  # type: ignore[arg-type]
            kind="cccd",
        )
        for i, person in enumerate(PEOPLE)
    ]
    return ScanBatch(batch_id=f"batch-{n:04d}", unit_id="door-1", sent_at=SENT, scans=scans, rev=7)


def _misconfigured(store: HubStore, fleet_key: object) -> None:
    """The hub runs with a key of its own making; a unit sends three sealed scans."""
    store.upsert_venue(VenueRecord(venue_id="hospital", name="Bệnh viện"))
    store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
    wrong = Ingestor(store, sealing_key=generate_key(), max_scans_per_minute=0)
    [reply] = wrong.handle(topic_scans("door-1"), encode_message(sealed_batch(1, fleet_key)))
    ack = decode_message(reply.payload, Ack)
    assert ack.stored == [] and {r.code for r in ack.refused} == {"unsealable"}
    assert all(r.retry is None for r in ack.refused)  # final: the unit quarantines them


def test_replay_recovers_the_scans_of_a_hub_that_had_the_wrong_sealing_key(
    hub_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_key = generate_key()
    right, wrong = tmp_path / "hub-seal.key", tmp_path / "other.key"
    save_private_key(fleet_key, right)
    save_private_key(generate_key(), wrong)
    with open_store(hub_db) as store:
        _misconfigured(store, fleet_key.public_key())
        assert store.counts()["scans"] == 0
        assert len(store.dead_letters()) == 3
    replay = ["dead-letters", "replay", "--db", hub_db]

    # Still the wrong key: nothing recovered, nothing lost.
    assert main([*replay, "--seal-key", str(wrong)]) == 0
    assert (
        "3 dead letters replayed: recovered 0 (0 scans stored), 3 still refused (unsealable 3)"
        in capsys.readouterr().out
    )
    # A dry run with the right key says what would happen and changes nothing.
    assert main([*replay, "--seal-key", str(right), "--dry-run"]) == 0
    assert "would recover 3" in capsys.readouterr().out
    with open_store(hub_db) as store:
        assert store.counts()["scans"] == 0 and len(store.dead_letters()) == 3
    # The fix: the fleet's key.
    assert (
        main(
            [
                *replay,
                "--seal-key",
                str(right),
                "--code",
                "unsealable",
                "--reason",
                "seal key fixed",
            ]
        )
        == 0
    )
    assert "recovered 3 (3 scans stored), 0 still refused" in capsys.readouterr().out
    with open_store(hub_db) as store:
        assert store.counts()["scans"] == 3 and store.dead_letters() == []
        tracer = AccessControlledStore(store, principal(Role.TRACER))
        found = tracer.find_people(PEOPLE[0].name, "kiểm tra", datetime.now(UTC))
        assert [m.id_number for m in found] == [PEOPLE[0].id_number]
        admin = AccessControlledStore(store, principal(Role.ADMIN))
        # Two runs wrote (the dry run writes nothing): the one with the wrong key, then this.
        entry, first = admin.audit_log(
            10, datetime.now(UTC), AuditQuery(action="replay_dead_letters")
        ).entries
        assert (first.reason, first.params["still_refused"]) == ("replay after a fix", 3)
        assert entry.reason == "seal key fixed"
        assert (entry.params["recovered"], entry.params["scans_stored"]) == (3, 3)
        assert entry.params["principal"]["account"].startswith("os:")
        # The unit, told "final", may later send its quarantined copies: already stored.
        right_hub = Ingestor(store, sealing_key=fleet_key, max_scans_per_minute=0)
        [reply] = right_hub.handle(
            topic_scans("door-1"), encode_message(sealed_batch(2, fleet_key.public_key()))
        )
        assert sorted(decode_message(reply.payload, Ack).stored) == [
            f"sealed-2-{i:04d}" for i in range(3)
        ]
    # Nothing left to replay.
    assert main([*replay, "--seal-key", str(right)]) == 0
    assert "0 dead letters replayed" in capsys.readouterr().out


def test_only_an_admin_replays(hub_db: str) -> None:
    from hub.replay import replay_dead_letters

    with open_store(hub_db) as store:
        ingestor = Ingestor(store)
        with pytest.raises(PermissionError):
            replay_dead_letters(
                store,
                ingestor,
                principal(Role.TRACER),
                codes=set(),
                since=None,
                at=datetime.now(UTC),
            )
