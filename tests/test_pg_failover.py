"""The hub survives losing its database server: a synchronous standby, promoted.

Everything is real and seen from outside. Two PostgreSQL clusters of the test's own
(`benchmarks.pgpair`: a primary whose commits wait for a streaming standby), a Mosquitto on a
free port, the hub as ``python -m hub serve --db <both hosts> --http ...`` (its users and
token made with ``hub user add`` and ``hub token create``), units that are real journals
and real `MqttSync`s, an MQTT client that watches the acks, HTTP with a bearer token.

The promise (docs/scaling.md, docs/decisions.md): a scan the hub acked is on the
standby's disk, so it survives the primary's server; the hub follows the promotion by
itself (``target_session_attrs=read-write``), without a restart; the units resend what
was not acked; every scan ends stored exactly once. While no server takes writes, reads
are refused with 503 ``database_unavailable`` (no answer leaves the hub before its audit
entry is written, and a standby takes no writes); after the promotion they work again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.pgpair import PgPair, PgUnavailable, find_pg_bin
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import LocalBroker, free_port
from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text
from doorscan.wire import (
    Ack,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_ack,
    topic_registry_unit,
    topic_registry_venue,
)
from hub.launcher import HubProcess
from hub.store import StoredScan, StoreUnavailable
from hub.store.postgres import PostgresStore
from tests.fault_net_support import (
    FAST_DOORS,
    PEOPLE,
    ROOT,
    figures,
    make_scan,
    make_sync,
    now,
)
from tests.hubstore import TEST_VAULT, vault_key_file
from tests.waiting import wait_for

UNITS = {"door-a": "hospital", "door-b": "hospital", "door-c": "market"}
PASSWORD = "mật khẩu đủ dài 2021"
REASON = "ca F0 số 7"


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    """A primary and its synchronous standby, stopped and removed whatever the test did."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not installed")
    try:
        pair = PgPair.start()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pair
    finally:
        pair.close()


def _hub(*args: str, stdin: str | None = None) -> str:
    """A ``hub`` command as an operator types it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "hub", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _mqtt(client_id: str, broker: LocalBroker) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _publish_registry(broker: LocalBroker) -> None:
    """Retained registry records, as provisioning publishes them."""
    client = _mqtt("test-provisioning", broker)
    try:
        records: list[tuple[str, bytes]] = [
            (topic_registry_venue(v), encode_message(VenueRecord(venue_id=v, name=f"Venue {v}")))
            for v in sorted(set(UNITS.values()))
        ]
        records += [
            (topic_registry_unit(u), encode_message(UnitRecord(unit_id=u, venue_id=v)))
            for u, v in UNITS.items()
        ]
        for topic, record in records:
            client.publish(topic, record, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


class AckWatcher:
    """Every ack the hub publishes, as any subscriber to the ack topics sees it."""

    def __init__(self, broker: LocalBroker) -> None:
        self._lock = threading.Lock()
        self._stored: list[str] = []
        self.acks = 0
        subscribed = threading.Event()
        self._client = _mqtt("test-ack-watcher", broker)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.subscribe([(topic_ack(unit), 1) for unit in UNITS])
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = decode_message(bytes(message.payload), Ack)
        with self._lock:
            self._stored += ack.stored
            self.acks += 1

    def stored(self) -> set[str]:
        """Every scan id an ack so far said was stored."""
        with self._lock:
            return set(self._stored)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Doors:
    """The units: each records a scan every few milliseconds into its journal, which its
    sync sends until the hub acks it; they go on scanning whatever the hub does."""

    def __init__(self, stack: ExitStack, broker: LocalBroker, folder: Path) -> None:
        self.journals = {u: stack.enter_context(ScanJournal(folder / f"{u}.db")) for u in UNITS}
        self.syncs: dict[str, MqttSync] = {
            u: stack.enter_context(make_sync(u, self.journals[u], broker, 25, 3.0)) for u in UNITS
        }
        self.recorded = dict.fromkeys(UNITS, 0)
        self._t0 = now() - timedelta(hours=3)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._scan, args=(u,)) for u in UNITS]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _scan(self, unit: str) -> None:
        i = 0
        while not self._stop.is_set():
            at = self._t0 + timedelta(seconds=2 * i)  # a busy door, in the past
            self.journals[unit].record(make_scan(unit, UNITS[unit], i, at))
            i += 1
            self.recorded[unit] = i
            if i % 5 == 0:
                self.syncs[unit].notify()
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        for sync in self.syncs.values():
            sync.notify()

    def expected(self) -> set[str]:
        return {
            make_scan(u, UNITS[u], i, self._t0).scan_id
            for u in UNITS
            for i in range(self.recorded[u])
        }

    def backlog(self) -> int:
        return sum(journal.backlog() for journal in self.journals.values())


@pytest.mark.broker
def test_the_hub_follows_a_promoted_standby_and_loses_no_acked_scan(
    pg_pair: PgPair, broker: LocalBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    url = pg_pair.url
    tracer = "tracer-1"
    _hub(
        "user", "add", "--db", url, "--id", tracer, "--name", "Y tế tỉnh",
        "--role", "tracer", "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    token = _hub("token", "create", "--db", url, "--user", tracer).strip()
    _publish_registry(broker)
    http = f"127.0.0.1:{free_port()}"
    web = httpx.Client(
        base_url=f"http://{http}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    person = PEOPLE[0]
    trace_body = {
        "id": person.id_number,
        "since": (now() - timedelta(days=1)).isoformat(),
        "until": now().isoformat(),
        "window_minutes": 60,
        "depth": 1,
        "reason": REASON,
    }
    hub = HubProcess(
        url,
        broker.host,
        broker.port,
        tmp_path / "hub.log",
        vault_key=vault_key_file(),
        extra_args=(*FAST_DOORS, "--http", http),
    )
    try:
        with ExitStack() as stack:
            watcher = AckWatcher(broker)
            stack.callback(watcher.close)
            doors = Doors(stack, broker, tmp_path)
            assert all(sync.wait_connected(10) for sync in doors.syncs.values())
            doors.start()
            stack.callback(doors.stop)
            assert wait_for(lambda: len(watcher.stored()) >= 150, 60), hub.output()
            assert web.get("/units").status_code == 200

            pg_pair.kill_primary()  # mid-stream: batches are in flight, doors keep scanning
            killed_at = time.monotonic()
            backlog_at_kill = doors.backlog()
            # Acks already on their way arrive; after that none can come, since no server
            # takes the commit that would come before an ack.
            time.sleep(1.0)
            acked_before = watcher.stored()
            acks_before = watcher.acks

            # The gap: reads are refused, clearly, not served unaudited.
            refused = web.post("/api/v1/trace", json=trace_body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "database_unavailable"
            assert refused.headers["Retry-After"] == "5"
            page = web.get("/units")
            assert page.status_code == 503 and 'id="unavailable"' in page.text
            time.sleep(max(0.0, killed_at + 3.0 - time.monotonic()))  # a gap of a few seconds
            assert watcher.acks == acks_before, "the hub acked while no server took writes"

            # Every scan acked before the kill is on the standby: the primary waited for it.
            pg_pair.wait_replayed()
            on_standby = {
                str(scan_id)
                for (scan_id,) in pg_pair.standby.sql(
                    "SELECT scan_id FROM scans WHERE scan_id = ANY(%s)", (sorted(acked_before),)
                )
            }
            assert acked_before - on_standby == set()

            pg_pair.promote_standby()
            promoted_at = time.monotonic()
            # No restart: the hub finds the new primary, the units resend what was not acked.
            assert wait_for(lambda: watcher.acks > acks_before, 60), hub.output()
            followed_s = time.monotonic() - promoted_at
            assert wait_for(lambda: len(watcher.stored()) > len(acked_before) + 150, 60), (
                hub.output()
            )
            traced = web.post("/api/v1/trace", json=trace_body)
            assert traced.status_code == 200, traced.text
            answer = traced.json()
            assert answer["index"]["id_number"] == person.id_number
            assert answer["contacts"], "the index person shared doors with others"
            assert web.get("/units").status_code == 200
            doors.stop()
            assert wait_for(lambda: doors.backlog() == 0, 90), (doors.backlog(), hub.output())
            expected = doors.expected()
        assert hub.proc.poll() is None, "the hub stopped:\n" + hub.output()
    finally:
        web.close()
        code = hub.stop()
    assert code == 0, hub.output()

    # Exactly once, by scan id, on the server that is now the primary.
    counts = {
        str(scan_id): count
        for scan_id, count in pg_pair.standby.sql(
            "SELECT scan_id, COUNT(*) FROM scans GROUP BY scan_id"
        )
    }
    assert {k for k, n in counts.items() if n != 1} == set()
    assert set(counts) == expected
    assert acked_before <= set(counts)
    letters = pg_pair.standby.sql("SELECT DISTINCT code FROM dead_letters")
    assert set(letters) <= {("replayed_batch",)}
    # The read after the promotion was audited there, and the chain holds across the gap.
    listed = _hub("audit", "list", "--db", url, "--action", "trace")
    [trace_entry] = [line for line in listed.splitlines() if REASON in line]
    assert tracer in trace_entry, listed
    _hub("audit", "verify", "--db", url)
    assert "Traceback" not in hub.output(), hub.output()
    counters = json.loads(hub.output().rsplit("hub stopped: ", 1)[1].splitlines()[0])
    figures(
        request,
        "PostgreSQL primary killed mid-stream, standby promoted (3 units)",
        runs=1,
        faults_injected=1,
        scans_sent=len(expected),
        scans_stored=len(counts),
        lost=len(expected - set(counts)),
        duplicates_absorbed=counters["scans_duplicate"],
        seconds=round(time.monotonic() - started, 1),
        acked_before_kill=len(acked_before),
        backlog_at_kill=backlog_at_kill,
        seconds_without_primary=round(promoted_at - killed_at, 1),
        seconds_to_first_ack_after_promotion=round(followed_s, 1),
        reads_refused_without_primary=2,
    )


def test_a_commit_cut_off_while_waiting_for_the_standby_raises_and_the_resend_is_absorbed(
    pg_pair: PgPair,
) -> None:
    """Lost during COMMIT, a call cannot know whether it committed: it raises (the hub
    acks nothing), and the scan sent again is stored once, whichever way it went."""
    day = datetime.now(UTC) - timedelta(hours=2)
    with PostgresStore(pg_pair.url, vault=TEST_VAULT) as store:
        store.upsert_venue(VenueRecord(venue_id="market", name="Chợ"))
        store.upsert_unit(UnitRecord(unit_id="door-c", venue_id="market"))
        scan = _stored_scan("door-c-000001", day)
        store.insert_scans([_stored_scan("door-c-000000", day)], received_at=day)
        pg_pair.standby.kill()  # from now on every commit waits for the standby
        failures: list[BaseException] = []

        def insert() -> None:
            try:
                store.insert_scans([scan], received_at=day)
            except BaseException as exc:  # looked at below
                failures.append(exc)

        thread = threading.Thread(target=insert)
        thread.start()
        assert wait_for(
            lambda: (
                pg_pair.primary.sql(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                )
                == [(1,)]
            )
        )
        pg_pair.kill_primary()  # the commit is on the primary's disk, never acknowledged
        thread.join(30)
        assert len(failures) == 1 and isinstance(failures[0], StoreUnavailable), failures
        pg_pair.primary.restart()
        pg_pair.standby.restart()
        pg_pair.wait_synchronous()

        again = store.insert_scans([scan], received_at=day)

    # Here the cut-off commit had reached the primary's disk: the resend is a duplicate.
    assert (again.new, again.duplicate) == ([], [scan.scan_id])
    assert pg_pair.primary.sql(
        "SELECT COUNT(*) FROM scans WHERE scan_id = %s", (scan.scan_id,)
    ) == [(1,)]


def _stored_scan(scan_id: str, at: datetime) -> StoredScan:
    who = parse_qr(cccd_text(PEOPLE[1]), today=at.date())
    return StoredScan(scan_id, "door-c", "market", at, True, who, "mqtt")


def test_without_the_server_binaries_the_pair_says_which_are_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the fixture's skip reason comes from: only a machine without them skips."""
    monkeypatch.setenv("DOORSCAN_PG_BIN", str(tmp_path))  # a folder without them
    assert find_pg_bin() is None
    with pytest.raises(PgUnavailable, match="initdb"):
        PgPair.start()
