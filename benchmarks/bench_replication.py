"""Hub ingest on a primary with a synchronous standby, against the same primary alone.

What the failover (docs/scaling.md, "Surviving the database server") costs at every
commit. Two set-ups are started in the same run, on this machine, by `benchmarks.pgpair`
(the clusters the failover test uses):

* **Baseline**: one PostgreSQL cluster; ``synchronous_commit = on``, so a commit
  returns once it is flushed to this cluster's disk.
* **Pair**: a primary whose ``synchronous_standby_names`` names a streaming standby
  (``pg_basebackup -R``): a commit returns once the standby has flushed it too.

The work is the hub's own `Ingestor.handle` on a `PostgresStore` (no broker: its cost
is not the subject here), fed unit batches encoded as units send them: 500-scan
batches (a unit's backlog) and single-scan messages (scans trickling in, one commit
each: where the standby's round trip weighs most). Each round feeds the same fresh
messages to both set-ups, in a shuffled order; figures are medians over the rounds, and
the ratio is pair ÷ baseline.

Both clusters and the standby share this machine's disk and cores. A real standby is
another machine: its wait is a network round trip plus that machine's flush, so this
is the protocol's cost on one box, not a given network's.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.bench_hub_ingest import Message, make_messages, register_units
from benchmarks.pgpair import PgPair, PgUnavailable
from benchmarks.report import Figure, Result
from doorscan.wire import MAX_BATCH_SCANS
from hub.ingest import Ingestor
from hub.store.postgres import PostgresStore
from hub.vault import Vault

__all__ = ["SUBJECT", "run"]

SUBJECT = "Hub ingest with a synchronous standby"
_SETUPS = ("alone", "pair")


def run(quick: bool, tmp: Path) -> Result:
    rounds = 2 if quick else 9  # this shared machine's commit times wander: many rounds
    batched_scans = 2 * MAX_BATCH_SCANS if quick else 10 * MAX_BATCH_SCANS
    single_scans = 50 if quick else 400
    with ExitStack() as stack:
        try:
            clusters = {
                "alone": stack.enter_context(PgPair.start(standby=False)),
                "pair": stack.enter_context(PgPair.start()),
            }
        except PgUnavailable as exc:
            return _not_measured(str(exc))
        vault = Vault.generate()
        ingestors = {}
        for setup, cluster in clusters.items():
            store = stack.enter_context(PostgresStore(cluster.url, vault=vault))
            register_units(store)
            # A benchmark's units scan far faster than a door can: no rate bound.
            ingestors[setup] = Ingestor(store, max_scans_per_minute=0)
        # Warm-up, untimed: each day's partition made, caches and connections warm.
        warm = make_messages(MAX_BATCH_SCANS, MAX_BATCH_SCANS) + make_messages(20, 1)
        for ingestor in ingestors.values():
            _rate(ingestor, warm, MAX_BATCH_SCANS + 20)
        rates: dict[str, dict[str, list[float]]] = {
            kind: {setup: [] for setup in _SETUPS} for kind in ("batched", "single")
        }
        order = list(_SETUPS)
        shuffle = random.Random(7).shuffle
        for _ in range(rounds):
            work = {
                "batched": (make_messages(batched_scans, MAX_BATCH_SCANS), batched_scans),
                "single": (make_messages(single_scans, 1), single_scans),
            }
            for kind, (messages, scans) in work.items():
                shuffle(order)
                for setup in order:
                    rates[kind][setup].append(_rate(ingestors[setup], messages, scans))
    median = {
        kind: {setup: statistics.median(values) for setup, values in by_setup.items()}
        for kind, by_setup in rates.items()
    }
    raw: dict[str, Any] = {
        "rounds": rounds,
        "batched_scans_per_round": batched_scans,
        "single_scan_messages_per_round": single_scans,
        "scans_per_s": rates,
    }
    single, batched = median["single"], median["batched"]
    # What the standby adds to each commit: the single-scan messages commit one by one.
    extra_ms = 1000 / single["pair"] - 1000 / single["alone"]
    raw["extra_ms_per_single_scan_commit"] = extra_ms
    # The same rounds paired: each round ran both set-ups close together.
    raw["median_of_round_ratios"] = {
        kind: statistics.median(
            p / a for p, a in zip(by_setup["pair"], by_setup["alone"], strict=True)
        )
        for kind, by_setup in rates.items()
    }
    figures = [
        Figure(SUBJECT, "500-scan batches, primary + synchronous standby", batched["pair"],
               "scans/s", batched["alone"], "the primary alone, same batches",
               note="one commit per 500 scans: the standby's wait is spread over them"),
        Figure(SUBJECT, "single-scan messages, primary + synchronous standby", single["pair"],
               "scans/s", single["alone"], "the primary alone, same messages",
               note=f"one commit per scan: {extra_ms:+.2f} ms per commit against the primary"
               " alone (standby on the same machine)"),
    ]  # fmt: skip
    return Result(figures, raw, __doc__.split("\n", 1)[1].strip())


def _rate(ingestor: Ingestor, messages: Sequence[Message], scans: int) -> float:
    """Scans per second `ingestor` stores from `messages`, each handled as the hub does."""
    stored, refused = ingestor.counters.scans_stored, ingestor.counters.dead_letters
    start = time.perf_counter()
    for topic, payload in messages:
        ingestor.handle(topic, payload)
    seconds = time.perf_counter() - start
    if ingestor.counters.dead_letters != refused:
        raise RuntimeError(f"the hub refused bench scans: {ingestor.counters.refusals}")
    if ingestor.counters.scans_stored - stored != scans:
        raise RuntimeError(f"{ingestor.counters.scans_stored - stored} scans stored, {scans} sent")
    return scans / seconds


def _not_measured(why: str) -> Result:
    text = __doc__.split("\n", 1)[1].strip()
    return Result([], {"missing": why}, f"{text}\n\n**Not measured in this run**: {why}.")
