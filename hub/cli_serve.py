"""`serve`: run the hub until SIGTERM/SIGINT: MQTT ingest (`hub.service`), and with
``--http HOST:PORT`` the web app (`hub.web.app`) in a uvicorn thread of the same process.

One process means one store object (one connection behind one lock) and one set of
metrics for both: /metrics sees the ingest counters. On SIGTERM the web server stops
taking requests and finishes those in flight, then MQTT stops, then the store closes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from doorscan.cards import CardKeyring
from doorscan.sealing import load_private_key
from hub.cli_common import Commands, UsageError, db_parent, open_store
from hub.cli_web import WebThread, http_address, where
from hub.ingest import Ingestor, describe
from hub.service import HubService, TlsFiles

if TYPE_CHECKING:
    from hub.web.metrics import HubMetrics

__all__ = ["add_serve"]


def add_serve(commands: Commands) -> None:
    parser = commands.add_parser(
        "serve",
        parents=[db_parent()],
        help="receive scans from the broker, store them, ack them (runs until stopped)",
        description="Subscribe to the registry and all scans; ack each batch after its commit.",
    )
    parser.add_argument(
        "--broker-host", default="127.0.0.1", help="MQTT broker (default 127.0.0.1)"
    )
    parser.add_argument("--broker-port", type=int, default=1883, help="MQTT port (default 1883)")
    parser.add_argument(
        "--client-id", default="doorscan-hub", help="MQTT client id (persistent session)"
    )
    parser.add_argument(
        "--card-key",
        dest="card_keys",
        metavar="PEM",
        type=Path,
        action="append",
        default=[],
        help="visitor-card public key to trust; repeat for several",
    )
    parser.add_argument(
        "--seal-key",
        type=Path,
        metavar="KEY",
        help="the hub's PRIVATE sealing key (PEM or 32 raw bytes): opens scans sent sealed",
    )
    parser.add_argument(
        "--http",
        type=http_address,
        metavar="HOST:PORT",
        help="also serve the web API and dashboard here (e.g. 127.0.0.1:8080)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    tls = parser.add_argument_group("TLS (all three, from `provisioning broker-files`)")
    tls.add_argument("--ca-file", type=Path, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument("--cert-file", type=Path, metavar="PEM", help="the hub's client certificate")
    tls.add_argument("--key-file", type=Path, metavar="PEM", help="the hub's private key")
    parser.set_defaults(run=_run_serve)


def _serve_tls(args: argparse.Namespace) -> TlsFiles | None:
    given = (args.ca_file, args.cert_file, args.key_file)
    if all(path is None for path in given):
        return None
    if any(path is None for path in given):
        raise UsageError("--ca-file, --cert-file and --key-file go together")
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    card_keys = CardKeyring.from_pem_files(args.card_keys) if args.card_keys else None
    sealing_key = load_private_key(args.seal_key) if args.seal_key else None
    tls = _serve_tls(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_store(args.db, args.vault_key, must_exist=False) as store:
        metrics = _metrics() if args.http else None
        ingestor = Ingestor(store, card_keys=card_keys, sealing_key=sealing_key, metrics=metrics)
        with HubService(
            ingestor, args.broker_host, args.broker_port, client_id=args.client_id, tls=tls
        ) as service:
            web = WebThread(store, args.http, metrics) if args.http else None
            try:
                if not service.wait_connected(30):
                    print("hub: no broker yet; retrying in the background", file=sys.stderr)
                if web is not None and not web.wait_started(30):
                    raise UsageError(f"the web server did not start on {where(args.http)}")
                # Scripts (the demo, tests) wait for this line before they publish.
                http = f" http={where(args.http)}" if args.http else ""
                print(
                    f"hub ready: db={args.db} broker={args.broker_host}:{args.broker_port}{http}",
                    flush=True,
                )
                stop.wait()
            finally:
                if web is not None:
                    web.close()
        print(f"hub stopped: {describe(ingestor.counters)}", flush=True)
    return 0


def _metrics() -> HubMetrics:
    from hub.web.metrics import HubMetrics  # only with --http: prometheus_client is not free

    return HubMetrics()
