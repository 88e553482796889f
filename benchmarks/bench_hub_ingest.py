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
  Goal: ≥ 80 % of the loopback message rate.
* **Hub, batched**: the same with 500 scans per batch (`MAX_BATCH_SCANS`), as a unit
  sends its backlog. Goal: ≥ 50 000 scans/s on SQLite. The baseline is the loopback
  rate of the same 500-scan messages, times 500.
* **PostgreSQL, 1 and 2 workers**: ``python -m hub serve --workers N`` on a
  PostgreSQL schema of its own (dropped afterwards), batched; no goal in the issue.
  Run only when the PostgreSQL store and the workers exist.

Rounds alternate baseline and hub, so a burst of load from other work on this shared
machine hits both; the figures are medians over the rounds.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
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
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    encode_message,
    topic_scans,
)
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import Store
from hub.store.factory import open_hub_store
from hub.vault import Vault

__all__ = ["SUBJECT", "Message", "make_messages", "register_units", "run"]

SUBJECT = "Hub ingest through Mosquitto"
GOAL_SINGLE_SHARE = 0.80
GOAL_BATCHED_PER_S = 50_000
UNITS = 20
Message = tuple[str, bytes]
_PG_NOTE = "no goal in the issue: context for scaling past one box (docs/scaling.md)"
_INFLIGHT = 100  # as LocalBroker's max_inflight_messages: the broker's window, not paho's 20


def _unit_ids(count: int) -> list[tuple[str, str]]:
    return [(f"bench-unit-{i:03d}", f"bench-venue-{i:03d}") for i in range(count)]


def register_units(store: Store, units: int = UNITS) -> None:
    """The registry records the hub checks each scan against (unknown units are refused)."""
    for unit_id, venue_id in _unit_ids(units):
        store.upsert_venue(VenueRecord(venue_id=venue_id, name=f"Quán {venue_id}"))
        store.upsert_unit(UnitRecord(unit_id=unit_id, venue_id=venue_id))


def make_messages(
    scans: int, per_batch: int, *, units: int = UNITS, seed: int = 6
) -> list[Message]:
    """`scans` CCCD scans in unit-format batches of `per_batch`, encoded as units send them."""
    texts = [cccd_text(p) for p in make_people(min(scans, 2000), seed=seed)]
    pairs = _unit_ids(units)
    start = datetime.now(UTC) - timedelta(hours=1)
    messages: list[Message] = []
    for first in range(0, scans, per_batch):
        unit_id, venue_id = pairs[(first // per_batch) % len(pairs)]
        batch = ScanBatch(
            batch_id=uuid.uuid4().hex,
            unit_id=unit_id,
            sent_at=start + timedelta(minutes=30),
            scans=[
                Scan(
                    scan_id=uuid.uuid4().hex,
                    venue_id=venue_id,
                    scanned_at=start + timedelta(milliseconds=10 * i),
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
    """The baseline consumer: counts messages, does nothing else."""

    def __init__(self, broker: LocalBroker) -> None:
        self.count = 0
        self._subscribed = threading.Event()
        self._client = _client(f"bench-sub-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        _connect(self._client, broker.host, broker.port)
        self._client.subscribe(SUB_ALL_SCANS, qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError("the broker did not confirm the subscription")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.count += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _loopback_rate(broker: LocalBroker, messages: Sequence[Message]) -> float:
    """Messages per second a bare subscriber receives."""
    subscriber = _BareSubscriber(broker)
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


def _hub_rate(broker: LocalBroker, messages: Sequence[Message], scans: int, folder: Path) -> float:
    """Scans per second the real hub stores (SQLite), from go until the last commit."""
    vault = Vault.generate()
    client_id = f"bench-hub-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(dir=folder) as where,
        open_hub_store(str(Path(where) / "hub.db"), vault=vault) as store,
    ):
        register_units(store)
        # A benchmark's units scan far faster than a door can: no rate bound (hub.history).
        ingestor = Ingestor(store, max_scans_per_minute=0)
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
    broker: LocalBroker, messages: Sequence[Message], scans: int, rounds: int, folder: Path
) -> tuple[list[float], list[float]]:
    """(loopback messages/s, hub scans/s), one of each per round, alternating."""
    loopback, hub = [], []
    for _ in range(rounds):
        loopback.append(_loopback_rate(broker, messages))
        hub.append(_hub_rate(broker, messages, scans, folder))
    return loopback, hub


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
        loop_1, hub_1 = _rounds(broker, single, single_scans, rounds, tmp)
        loop_b, hub_b = _rounds(broker, batched, batched_scans, rounds, tmp)
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
    raw |= {
        "single": {"scans": single_scans, "loopback_msgs_per_s": loop_1, "hub_scans_per_s": hub_1},
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
               f"≥ {GOAL_SINGLE_SHARE:.0%} of loopback",
               single_met, "" if single_met else _single_note(hub_1_rate)),
        Figure(SUBJECT, "hub, 500-scan batches, SQLite", hub_b_rate, "scans/s",
               loop_b_rate, "loopback of the same batches × 500",
               f"≥ {GOAL_BATCHED_PER_S:,} scans/s",
               hub_b_rate >= GOAL_BATCHED_PER_S,
               "" if hub_b_rate >= GOAL_BATCHED_PER_S else _batched_note(hub_b_rate)),
    ]  # fmt: skip
    pg_rates = pg.get("scans_per_s", {})
    if pg_rates:
        figures += [
            Figure(SUBJECT, "hub, 500-scan batches, PostgreSQL, 1 worker", pg_rates["1"],
                   "scans/s", hub_b_rate, "1 hub on SQLite", note=_PG_NOTE),
            Figure(SUBJECT, "hub, 500-scan batches, PostgreSQL, 2 workers", pg_rates["2"],
                   "scans/s", pg_rates["1"], "1 worker on PostgreSQL", note=_PG_NOTE),
        ]  # fmt: skip
    text = __doc__.split("\n", 1)[1].strip()
    if pg_missing:
        text += f"\n\nPostgreSQL rows: **not measured in this run**: {pg_missing}."
    return Result(figures, raw, text)


def _single_note(rate: float) -> str:
    # What is said here is what the code does, not where the time goes: this report does
    # not profile it, and an attribution nobody measured is a guess in a table.
    return (
        f"about {1000 / rate:.1f} ms per scan here, where the broker only forwards bytes;"
        " each single-scan message is its own store transaction, acked after its commit"
        " (no group commit yet). Not broken down by this report"
    )


def _batched_note(rate: float) -> str:
    return (
        f"{1e6 / rate:.0f} µs per scan in the one hub process, which decodes, judges, seals"
        " and inserts each scan; not broken down by this report (no floor measured yet)"
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
        # A benchmark's units scan far faster than a door can: no rate bound (hub.history).
        "--max-scans-per-minute", "0",
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
