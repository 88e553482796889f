"""A real hub that dies on purpose: the fault-injection runner for tests/test_fault_network.py.

    python -m tests.fault_hub --db hub.db --broker-port 1883 --die-at 3 --when after

It runs the production `HubService` + `Ingestor` + `SqliteStore`; only the store is
wrapped, so that on the Nth `insert_scans` the process ends with `os._exit(137)`
(what a SIGKILL or the OOM killer leaves: no finally blocks, no clean disconnect):

* ``--when before``: before delegating, so the batch is not committed;
* ``--when after``: after the delegate committed, before the ack goes out and before
  the broker gets its manual PUBACK, the narrowest window of the ack-after-commit rule.

The fault lives here, in test code; production code has no hook for it.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hub.cli_common import load_vault
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import BatchKey, InsertResult, SqliteStore, StoredScan
from hub.vault import Vault

__all__ = ["DyingStore", "main"]

EXIT_CODE = 137  # 128 + SIGKILL, so the test can tell the planned death from a crash


class DyingStore(SqliteStore):
    """A real SqliteStore whose Nth `insert_scans` kills the process."""

    def __init__(self, path: str, *, vault: Vault, die_at: int, when: str) -> None:
        super().__init__(path, vault=vault)
        self._die_at = die_at
        self._when = when
        self._calls = 0

    def insert_scans(
        self, scans: Sequence[StoredScan], received_at: datetime, batch: BatchKey | None = None
    ) -> InsertResult:
        self._calls += 1
        dying = self._calls == self._die_at
        if dying and self._when == "before":
            os._exit(EXIT_CODE)
        result = super().insert_scans(scans, received_at, batch)
        if dying:
            os._exit(EXIT_CODE)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_hub")
    parser.add_argument("--db", required=True)
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--die-at", type=int, required=True, help="the Nth insert_scans kills")
    parser.add_argument("--when", choices=("before", "after"), required=True)
    parser.add_argument("--vault-key", type=Path, help="default: $DOORSCAN_HUB_VAULT_KEY")
    args = parser.parse_args(argv)
    # A child process: the test's vault reaches it as the key file, like the real hub's.
    vault = load_vault(args.vault_key)
    with DyingStore(args.db, vault=vault, die_at=args.die_at, when=args.when) as store:
        service = HubService(Ingestor(store), args.broker_host, args.broker_port)
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
