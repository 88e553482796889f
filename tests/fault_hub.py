"""A real hub that dies on purpose: the fault-injection runner for tests/test_fault_network.py.

    python -m tests.fault_hub --db hub.db --broker-port 1883 --die-at 3 --when after

It runs the production `HubService` + `Ingestor` + the store ``--db`` names (SQLite or
PostgreSQL); only the store's scan commits (`insert_scans`, `insert_batches`) are
wrapped, so that at the Nth one the process ends with `os._exit(137)` (what a SIGKILL
or the OOM killer leaves: no finally blocks, no clean disconnect):

* ``--when before``: before delegating, so the batch is not committed;
* ``--when after``: after the delegate committed, before the ack goes out and before
  the broker gets its manual PUBACK, the narrowest window of the ack-after-commit rule.

The fault lives here, in test code; production code has no hook for it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from hub.cli_common import load_vault
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import (
    BatchConflict,
    BatchInsert,
    BatchKey,
    HubStore,
    InsertResult,
    NewDeadLetter,
    StoredScan,
)
from hub.store.factory import open_hub_store

__all__ = ["make_dying", "main"]

T = TypeVar("T")
EXIT_CODE = 137  # 128 + SIGKILL, so the test can tell the planned death from a crash


def make_dying(store: HubStore, *, die_at: int, when: str) -> None:
    """Make the `die_at`th scan commit of this real store end the process: a call of
    `insert_scans`, or of `insert_batches` (several batches arriving together)."""
    calls = itertools.count(1)

    def dying(commit: Callable[[], T], batches: int) -> T:
        number = next(calls)
        death = number == die_at
        # Said before it happens, so that the test knows how many batches each commit
        # held (messages that arrived together share one) whichever way it ends.
        print(f"fault hub: commit {number} holds {batches} batches", flush=True)
        if death and when == "before":
            os._exit(EXIT_CODE)
        result = commit()
        if death:
            os._exit(EXIT_CODE)
        return result

    real_scans, real_batches = store.insert_scans, store.insert_batches

    def insert_scans(
        scans: Sequence[StoredScan],
        received_at: datetime,
        batch: BatchKey | None = None,
        letters: Sequence[NewDeadLetter] = (),
    ) -> InsertResult:
        return dying(lambda: real_scans(scans, received_at, batch, letters), 1)

    def insert_batches(
        batches: Sequence[BatchInsert], received_at: datetime
    ) -> list[InsertResult | BatchConflict]:
        return dying(lambda: real_batches(batches, received_at), len(batches))

    # Set on this one object, whichever backend's class it is: no class, and no
    # production code, carries the fault.
    store.insert_scans = insert_scans  # type: ignore[method-assign]
    store.insert_batches = insert_batches  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_hub")
    parser.add_argument("--db", required=True)
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--die-at", type=int, required=True, help="the Nth scan commit kills")
    parser.add_argument("--when", choices=("before", "after"), required=True)
    parser.add_argument("--vault-key", type=Path, help="default: $DOORSCAN_HUB_VAULT_KEY")
    args = parser.parse_args(argv)
    # A child process: the test's vault reaches it as the key file, like the real hub's.
    vault = load_vault(args.vault_key)
    with open_hub_store(args.db, vault=vault) as store:
        make_dying(store, die_at=args.die_at, when=args.when)
        # Fault tests scan far faster than a door can: no rate bound (hub.history).
        ingestor = Ingestor(store, max_scans_per_minute=0)
        service = HubService(ingestor, args.broker_host, args.broker_port)
        with service:
            if not service.wait_connected(30):
                print("fault hub: no broker", flush=True)
                return 1
            print("hub ready", flush=True)
            # Runs until the planned os._exit; the test kills it if the fault never comes.
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
