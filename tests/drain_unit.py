"""A unit's sync as its own process: drain one journal to the broker, then report.

    python -m tests.drain_unit --journal journal.db --unit-id door-1 --broker-port 1883

Run by tests/test_fault_network.py so that the draining unit's memory (VmRSS) can be
sampled from /proc/<pid>/status without the test's own heap in the figure. It opens
the journal with the production `ScanJournal`, runs the production `MqttSync` until
the backlog is 0, and prints one JSON line with what the sync counted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from device.config import BrokerConfig, SyncConfig
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drain_unit")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--unit-id", required=True)
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--ack-timeout-s", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=240.0, help="give up after this")
    args = parser.parse_args(argv)
    config = SyncConfig(
        batch_size=args.batch_size,
        ack_timeout_s=args.ack_timeout_s,
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    broker = BrokerConfig(host=args.broker_host, port=args.broker_port)
    with ScanJournal(args.journal) as journal:
        start_backlog = journal.backlog()
        print(json.dumps({"ready": True, "backlog": start_backlog}), flush=True)
        deadline = time.monotonic() + args.timeout_s
        with MqttSync(args.unit_id, journal, broker, config) as sync:
            while journal.backlog() > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            report = {
                "backlog_before": start_backlog,
                "backlog_after": journal.backlog(),
                "batches_sent": sync.batches_sent,
                "acks_received": sync.acks_received,
            }
    print(json.dumps(report), flush=True)
    return 0 if report["backlog_after"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
