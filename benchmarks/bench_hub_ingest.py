"""Hub ingest through a real Mosquitto, against the broker's own loopback rate.

Everything runs on one Mosquitto started on a free port (`LocalBroker`). A publisher
in a process of its own (so that it does not share the measuring process's GIL)
sends pre-encoded messages at QoS 1 as fast as the broker takes them; the clock runs
from the moment it is told to go until the consumer has handled the last message.

* **Baseline**: a bare paho subscriber (QoS 1, counts messages, nothing else) reading
  the very same messages on the very same topics: the broker's loopback rate.
* **Hub, single-scan messages**: the real `HubService` + `Ingestor` on a real store
  (SQLite on this disk, WAL, synchronous=FULL), each message one `ScanBatch` of one
  CCCD scan, as a unit sends them when scans trickle in. Rate = scans stored / s.
  Goal: ≥ 0.5 × the loopback message rate. Its floor, in the same rounds: a bare
  subscriber that answers each message with an ack-sized message at QoS 1 and sends
  its PUBACK by hand, what the hub does per message over MQTT besides its own work.
  Beside it, the hub's own work on the same messages fed straight to the ingestor in
  groups of 100 (as they come under load), with no broker: the two shares of its time.
* **Hub, batched**: the same with 500 scans per batch (`MAX_BATCH_SCANS`), as a unit
  sends its backlog. The baseline is the loopback rate of the same 500-scan messages,
  times 500; its goal is set against its floor ("Hub ingest against its floor").
* **PostgreSQL, 1 and 2 workers**: ``python -m hub serve --workers N`` on a
  PostgreSQL schema of its own (dropped afterwards), batched. Goal: 2 workers ≥ 1.6 ×
  one (0.8 × N), where there is a core per worker.

The units scan at a door's pace (`SCAN_SPACING`), so the hub runs with its flood bound
on, as in production.

Rounds alternate baseline and hub, so a burst of load from other work on this shared
machine hits both; the figures are medians over the rounds.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from benchmarks.report import Figure, Result
from doorscan.localbroker import LocalBroker
from doorscan.mqtt import make_client
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    MAX_BATCH_SCANS,
    SUB_ALL_SCANS,
    WIRE_REVISION,
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_scans,
)
from hub.ingest import Delivery, Ingestor
from hub.service import GROUP_MAX, HubService
from hub.store import Store
from hub.store.factory import open_hub_store
from hub.vault import Vault

__all__ = ["SUBJECT", "Message", "make_messages", "register_units", "run"]

SUBJECT = "Hub ingest through Mosquitto"
GOAL_SINGLE_SHARE = 0.5
GOAL_WORKER_SHARE = 0.8
UNITS = 20
SCAN_SPACING = timedelta(milliseconds=1100)
"""Between two scans of the whole bench: one unit, scanning its batch, stays under the
hub's flood bound (60 a minute)."""
Message = tuple[str, bytes]
_PG_NOTE = "no goal in the issue: context for scaling past one box (docs/scaling.md)"
_INFLIGHT = 100  # as LocalBroker's max_inflight_messages: the broker's window, not paho's 20


def _unit_ids(count: int, fleet: str = "") -> list[tuple[str, str]]:
    return [(f"bench{fleet}-unit-{i:03d}", f"bench{fleet}-venue-{i:03d}") for i in range(count)]


def register_units(store: Store, units: int = UNITS, fleet: str = "") -> None:
    """The registry records the hub checks each scan against (unknown units are refused).

    `fleet` tells apart sets of units whose scans share one database and one time span
    (each set scans at a door's pace; two sets at once would look like one flood)."""
    for unit_id, venue_id in _unit_ids(units, fleet):
        store.upsert_venue(VenueRecord(venue_id=venue_id, name=f"Quán {venue_id}"))
        store.upsert_unit(UnitRecord(unit_id=unit_id, venue_id=venue_id))


def make_messages(
    scans: int, per_batch: int, *, units: int = UNITS, seed: int = 6, fleet: str = ""
) -> list[Message]:
    """`scans` CCCD scans in unit-format batches of `per_batch`, encoded as units send them.

    Scans are `SCAN_SPACING` apart, so no unit scans faster than a door can and the hub
    runs with its flood bound on (`hub.history`), reading each unit's recent scans as in
    production; the last scan is a minute old.
    """
    texts = [cccd_text(p) for p in make_people(min(scans, 2000), seed=seed)]
    pairs = _unit_ids(units, fleet)
    start = datetime.now(UTC) - SCAN_SPACING * scans - timedelta(minutes=1)
    messages: list[Message] = []
    for first in range(0, scans, per_batch):
        unit_id, venue_id = pairs[(first // per_batch) % len(pairs)]
        batch = ScanBatch(
            batch_id=uuid.uuid4().hex,
            unit_id=unit_id,
            sent_at=start + SCAN_SPACING * scans,
            scans=[
                Scan(
                    scan_id=uuid.uuid4().hex,
                    venue_id=venue_id,
                    scanned_at=start + SCAN_SPACING * i,
                    qr_text=texts[i % len(texts)],
                )
                for i in range(first, min(first + per_batch, scans))
            ],
        )
        messages.append((topic_scans(unit_id), encode_message(batch)))
    return messages


def _client(client_id: str, clean: bool = True) -> mqtt.Client:
    return make_client(client_id, persistent=not clean)


def _connect(client: mqtt.Client, host: str, port: int) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port, 60)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"no connection to the broker at {host}:{port}")


def publish_all(
    host: str,
    port: int,
    messages: Sequence[Message],
    ready: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
) -> None:
    """The publisher process: connect, say ready, wait for go, publish all at QoS 1."""
    client = _client(f"bench-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(_INFLIGHT)
    client.max_queued_messages_set(0)  # 0: unbounded; paho holds what the window cannot take
    _connect(client, host, port)
    ready.set()
    go.wait(60)
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def _timed_stream(
    broker: LocalBroker, messages: Sequence[Message], handled: Callable[[], int], target: int
) -> float:
    """Seconds from "go" until `handled()` reaches `target`, with a separate publisher."""
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    publisher = context.Process(
        target=publish_all, args=(broker.host, broker.port, list(messages), ready, go)
    )
    publisher.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the publisher did not connect")
        start = time.perf_counter()
        go.set()
        deadline = start + 600
        while handled() < target:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {handled()} of {target} handled in 600 s")
            time.sleep(0.002)
        return time.perf_counter() - start
    finally:
        publisher.join(120)
        if publisher.is_alive():
            publisher.kill()


class _BareSubscriber:
    """The baseline consumer: counts messages, does nothing else.

    With `reply`, the least a hub does per message over MQTT: it publishes an answer of
    an ack's size at QoS 1 and sends the PUBACK itself (manual ack), as `HubService`
    does after its commit; nothing is decoded or stored.
    """

    def __init__(self, broker: LocalBroker, *, reply: bytes | None = None) -> None:
        self.count = 0
        self._reply = reply
        self._subscribed = threading.Event()
        self._client = make_client(
            f"bench-sub-{uuid.uuid4().hex[:8]}", manual_ack=reply is not None
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        _connect(self._client, broker.host, broker.port)
        self._client.subscribe(SUB_ALL_SCANS, qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError("the broker did not confirm the subscription")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._reply is not None:
            client.publish(message.topic.rsplit("/", 1)[0] + "/ack", self._reply, qos=1)
            client.ack(message.mid, message.qos)
        self.count += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _loopback_rate(
    broker: LocalBroker, messages: Sequence[Message], reply: bytes | None = None
) -> float:
    """Messages per second a bare subscriber receives (and answers, with `reply`)."""
    subscriber = _BareSubscriber(broker, reply=reply)
    try:
        seconds = _timed_stream(broker, messages, lambda: subscriber.count, len(messages))
    finally:
        subscriber.close()
    return len(messages) / seconds


def _forget_session(broker: LocalBroker, client_id: str) -> None:
    """Drop the hub's persistent session, or the broker would queue later rounds for it."""
    client = _client(client_id, clean=True)
    _connect(client, broker.host, broker.port)
    client.disconnect()
    client.loop_stop()


def _direct_rate(messages: Sequence[Message], folder: Path) -> float:
    """Messages per second the hub's own work takes, fed straight to `handle_group` in
    groups as large as the service forms under load: no broker, no MQTT client."""
    with (
        tempfile.TemporaryDirectory(dir=folder) as where,
        open_hub_store(str(Path(where) / "hub.db"), vault=Vault.generate()) as store,
    ):
        register_units(store)
        ingestor = Ingestor(store)
        groups = [
            [Delivery(topic, payload) for topic, payload in messages[i : i + GROUP_MAX]]
            for i in range(0, len(messages), GROUP_MAX)
        ]
        started = time.perf_counter()
        for group in groups:
            ingestor.handle_group(group)
        seconds = time.perf_counter() - started
        if ingestor.counters.scans_stored != len(messages):
            raise RuntimeError(f"fed directly, the hub refused bench scans: {ingestor.counters}")
    return len(messages) / seconds


def _hub_rate(broker: LocalBroker, messages: Sequence[Message], scans: int, folder: Path) -> float:
    """Scans per second the real hub stores (SQLite), from go until the last commit."""
    vault = Vault.generate()
    client_id = f"bench-hub-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(dir=folder) as where,
        open_hub_store(str(Path(where) / "hub.db"), vault=vault) as store,
    ):
        register_units(store)
        ingestor = Ingestor(store)
        with HubService(ingestor, broker.host, broker.port, client_id=client_id) as service:
            if not service.wait_connected(30):
                raise RuntimeError("the hub did not connect to the broker")
            seconds = _timed_stream(broker, messages, lambda: ingestor.counters.scans_stored, scans)
        if ingestor.counters.dead_letters:
            raise RuntimeError(f"the hub refused bench scans: {ingestor.counters.refusals}")
        stored = store.counts()["scans"]
        if stored != scans:
            raise RuntimeError(f"{stored} scans stored, {scans} sent")
    _forget_session(broker, client_id)
    return scans / seconds


def _rounds(
    broker: LocalBroker,
    messages: Sequence[Message],
    scans: int,
    rounds: int,
    folder: Path,
    reply: bytes | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """(loopback messages/s, hub scans/s, replying subscriber messages/s) per round,
    alternating; the last is empty without `reply`."""
    loopback: list[float] = []
    hub: list[float] = []
    replying: list[float] = []
    for _ in range(rounds):
        loopback.append(_loopback_rate(broker, messages))
        hub.append(_hub_rate(broker, messages, scans, folder))
        if reply is not None:
            replying.append(_loopback_rate(broker, messages, reply))
    return loopback, hub, replying


def _ack_sized(message: Message) -> bytes:
    """An answer the size of the hub's ack to `message` (a batch of one scan)."""
    batch = json.loads(message[1])
    ack = Ack(
        rev=WIRE_REVISION,
        batch_id=batch["batch_id"],
        unit_id=batch["unit_id"],
        stored=[scan["scan_id"] for scan in batch["scans"]],
        hub_time=datetime.now(UTC),
    )
    return encode_message(ack)


def run(quick: bool, tmp: Path) -> Result:
    rounds = 2 if quick else 3
    single_scans = 100 if quick else 2000
    batched_scans = 2 * MAX_BATCH_SCANS if quick else 50 * MAX_BATCH_SCANS
    single = make_messages(single_scans, 1)
    batched = make_messages(batched_scans, MAX_BATCH_SCANS)
    raw: dict[str, Any] = {
        "single_scan_message_bytes": len(single[0][1]),
        "batch_message_bytes": len(batched[0][1]),
        "rounds": rounds,
    }
    with LocalBroker() as broker:
        loop_1, hub_1, reply_1 = _rounds(
            broker, single, single_scans, rounds, tmp, _ack_sized(single[0])
        )
        loop_b, hub_b, _ = _rounds(broker, batched, batched_scans, rounds, tmp)
    pg_missing = (
        ""
        if workers_available()
        else "`hub/store/postgres.py` or `hub/workers.py` is not there yet"
    )
    pg: dict[str, Any] = {}
    if not pg_missing:
        try:
            pg = postgres_rates(batched, batched_scans, 1 if quick else 2, tmp)
        except RuntimeError as exc:
            # The SQLite rows still stand; the report says why these are missing.
            pg_missing = f"`hub serve --workers` on PostgreSQL failed: {str(exc).strip()[-300:]}"
    loop_1_rate, hub_1_rate = statistics.median(loop_1), statistics.median(hub_1)
    loop_b_rate = statistics.median(loop_b) * MAX_BATCH_SCANS
    hub_b_rate = statistics.median(hub_b)
    reply_1_rate = statistics.median(reply_1)
    direct_1 = [_direct_rate(single, tmp) for _ in range(rounds)]
    direct_1_rate = statistics.median(direct_1)
    raw |= {
        "single": {
            "scans": single_scans,
            "loopback_msgs_per_s": loop_1,
            "hub_scans_per_s": hub_1,
            "replying_subscriber_msgs_per_s": reply_1,
            "fed_directly_msgs_per_s": direct_1,
        },
        "batched": {
            "scans": batched_scans,
            "loopback_msgs_per_s": loop_b,
            "hub_scans_per_s": hub_b,
        },
        "postgres": pg or {"missing": pg_missing},
    }
    single_met = hub_1_rate >= GOAL_SINGLE_SHARE * loop_1_rate
    figures = [
        Figure(SUBJECT, "bare subscriber, single-scan messages (loopback)", loop_1_rate, "msg/s",
               note=f"{raw['single_scan_message_bytes']} bytes each, QoS 1, the broker's rate"),
        Figure(SUBJECT, "hub, single-scan messages, SQLite", hub_1_rate, "scans/s",
               loop_1_rate, "loopback, 1 scan per message",
               f"≥ {GOAL_SINGLE_SHARE} × loopback",
               single_met, _single_note(hub_1_rate, reply_1_rate, direct_1_rate),
               floor=reply_1_rate,
               floor_name="a bare subscriber that answers each message and acks it by hand"),
        Figure(SUBJECT, "hub's own work, single-scan messages fed directly", direct_1_rate,
               "msg/s", loop_1_rate, "loopback, 1 scan per message",
               note=f"`Ingestor.handle_group` in groups of {GROUP_MAX}, no MQTT: the decode,"
               " judging, commit and ack of the row above without its MQTT round trip"),
        Figure(SUBJECT, "hub, 500-scan batches, SQLite", hub_b_rate, "scans/s",
               loop_b_rate, "loopback of the same batches × 500",
               note="judged against its floor in the next section, fed directly"),
    ]  # fmt: skip
    pg_rates = pg.get("scans_per_s", {})
    if pg_rates:
        scaled = pg_rates["2"] / pg_rates["1"]
        figures += [
            Figure(SUBJECT, "hub, 500-scan batches, PostgreSQL, 1 worker", pg_rates["1"],
                   "scans/s", hub_b_rate, "1 hub on SQLite", note=_PG_NOTE),
            Figure(SUBJECT, "hub, 500-scan batches, PostgreSQL, 2 workers", pg_rates["2"],
                   "scans/s", pg_rates["1"], "1 worker on PostgreSQL",
                   f"≥ {GOAL_WORKER_SHARE * 2:.1f}× (0.8 × N) where the cores allow",
                   scaled >= GOAL_WORKER_SHARE * 2, _workers_note()),
        ]  # fmt: skip
    text = __doc__.split("\n", 1)[1].strip()
    if pg_missing:
        text += f"\n\nPostgreSQL rows: **not measured in this run**: {pg_missing}."
    return Result(figures, raw, text)


def _single_note(rate: float, replying: float, direct: float) -> str:
    # Only what this run measured: the hub's time per message beside the time a process
    # that does nothing but answer and ack (the floor column) needs for the same messages,
    # and the hub's own work fed directly (the row below).
    return (
        f"{1e6 / rate:.0f} µs per message in the hub; only answering and acking each one"
        f" costs a process {1e6 / replying:.0f} µs (the floor), the hub's own work fed"
        f" directly {1e6 / direct:.0f} µs (next row). Messages that arrive together share"
        " one commit (group commit)"
    )


def _workers_note() -> str:
    cores = os.cpu_count() or 1
    return (
        f"{cores} cores here, shared by both workers, PostgreSQL, the broker and the"
        " publisher: the goal is for a machine with a core per worker"
    )


# -- PostgreSQL with N workers ---------------------------------------------------------


def workers_available() -> bool:
    """Whether the PostgreSQL store and `hub serve --workers` are in this tree."""
    hub = Path(__file__).resolve().parents[1] / "hub"
    return (hub / "store" / "postgres.py").exists() and (hub / "workers.py").exists()


def postgres_rates(
    messages: Sequence[Message], scans: int, rounds: int, folder: Path
) -> dict[str, Any]:
    """Scans/s of ``python -m hub serve --workers N`` on PostgreSQL, N = 1 and 2.

    A broker of its own: worker sessions must not linger on the one the SQLite rows use.
    Each round gets a fresh schema in the bench database, dropped afterwards.
    """
    from benchmarks.tracedata import bench_schema  # psycopg only when PostgreSQL is measured

    rates: dict[str, list[float]] = {}
    with LocalBroker() as broker, tempfile.TemporaryDirectory(dir=folder) as where:
        key = Path(where) / "vault.key"
        Vault.generate().save(key)
        for _ in range(rounds):
            for workers in (1, 2):
                with bench_schema("bench_ingest") as url:
                    rate = _workers_rate(broker, messages, scans, workers, url, key)
                rates.setdefault(str(workers), []).append(rate)
    return {
        "rounds": rates,
        "scans_per_s": {w: statistics.median(r) for w, r in rates.items()},
    }


def _workers_rate(
    broker: LocalBroker,
    messages: Sequence[Message],
    scans: int,
    workers: int,
    url: str,
    key: Path,
) -> float:
    import psycopg

    with open_hub_store(url, vault=Vault.load(key)) as store:
        register_units(store)
    client_id = f"bench-hub-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable, "-m", "hub", "serve", "--db", url, "--vault-key", str(key),
        "--broker-host", broker.host, "--broker-port", str(broker.port),
        "--client-id", client_id, "--workers", str(workers), "--log-level", "WARNING",
    ]  # fmt: skip
    hub = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    # Drained all along, so a full pipe never blocks the hub.
    threading.Thread(target=_drain, args=(hub, lines), daemon=True).start()
    try:
        _wait_ready(hub, lines, workers)
        with psycopg.connect(url, autocommit=True) as conn:

            def stored() -> int:
                time.sleep(0.05)  # a count per 50 ms: the poll must not load the database
                row = conn.execute("SELECT count(*) FROM scans").fetchone()
                return int(row[0]) if row else 0

            seconds = _timed_stream(broker, messages, stored, scans)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(60)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait(10)
    if workers == 1:
        _forget_session(broker, client_id)
    return scans / seconds


def _drain(hub: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    for line in hub.stdout or []:
        lines.put(line)


def _wait_ready(hub: subprocess.Popen[str], lines: queue.Queue[str], workers: int) -> None:
    seen: list[str] = []
    ready = 0
    deadline = time.monotonic() + 120
    while ready < workers:
        if hub.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("hub serve did not get ready:\n" + "".join(seen[-20:]))
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        ready += " ready: db=" in line
