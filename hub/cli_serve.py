"""`serve`: run the hub until SIGTERM/SIGINT: MQTT ingest (`hub.service`), and with
``--http HOST:PORT`` the web app (`hub.web.app`) in a uvicorn thread of the same process.

One process means one store object (one connection behind one lock) and one set of
metrics for both: /metrics sees the ingest counters. On SIGTERM the web server stops
taking requests and finishes those in flight, then MQTT stops, then the store closes.

``--workers N`` (N > 1) makes this process a supervisor of N worker processes that
share the scans through an MQTT shared subscription (`hub.workers`). Each worker is
this same command with a hidden ``--worker-index``. ``--http`` stays with one process
(run ``doorscan-hub web`` beside the workers). With TLS each worker needs its own
certificate, so ``--cert-file``/``--key-file`` carry ``{n}`` (``hub.workers`` says why)::

    doorscan-hub serve --workers 2 --broker-host mq --broker-port 8883 \\
        --ca-file broker/ca.pem --cert-file broker/hub-{n}-cert.pem \\
        --key-file broker/hub-{n}-key.pem
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from doorscan.errors import ConfigError
from doorscan.wire.limits import RATE_MAX_SCANS
from hub.assembly import HubAssembly
from hub.cli_common import (
    Commands,
    RefusedToStart,
    UsageError,
    broker_parent,
    db_parent,
    keys_parent,
    open_store,
    tls_files,
)
from hub.cli_web import http_parent
from hub.config import HubConfig, shown_url
from hub.ingest import IngestCounters, describe
from hub.preflight import Check, failures, preflight, render
from hub.workers import (
    EXIT_REFUSED,
    WORKER_PLACEHOLDER,
    WorkerPool,
    ready_line,
    supervisor_gone,
    worker_path,
)

if TYPE_CHECKING:
    from doorscan.mqtt import TlsFiles
    from hub.web.metrics import HubMetrics

__all__ = ["add_serve"]


def add_serve(commands: Commands) -> None:
    parser = commands.add_parser(
        "serve",
        parents=[db_parent(), broker_parent(), keys_parent(), http_parent()],
        help="receive scans from the broker, store them, ack them (runs until stopped)",
        description="Subscribe to the registry and all scans; ack each batch after its commit.",
        epilog="With --workers N over TLS, --cert-file and --key-file contain {n}, which "
        "becomes each worker's number: --cert-file broker/hub-{n}-cert.pem "
        "(from `provisioning broker-files --hub-workers N`).",
    )
    parser.add_argument("--client-id", help="MQTT client id (persistent session)")
    parser.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="N worker processes sharing the scans (MQTT shared subscription; default 1)",
    )
    parser.add_argument(
        "--max-scans-per-minute",
        type=int,
        metavar="N",
        help=f"scans one unit may claim in any minute before the rest are held apart from "
        f"traces (default {RATE_MAX_SCANS}: twice a busy door; 0: no bound)",
    )
    parser.add_argument(
        "--report-every-s",
        type=float,
        metavar="S",
        help="log the ingest counters every S seconds when they moved (0: never; default 60)",
    )
    # Set by the supervisor on the workers it starts; not for people.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", help="logging level (default INFO)")
    parser.set_defaults(run=_run_serve)


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def _run_serve(args: argparse.Namespace) -> int:
    if args.workers > 1 and args.worker_index is None:
        return _run_supervisor(args)
    return _run_hub(args)


def _run_hub(args: argparse.Namespace) -> int:
    """One hub process: the whole hub (``--workers 1``) or one worker of several.

    It first runs the checks of ``doorscan-hub check`` (without contacting the broker,
    which the hub retries by itself) and refuses to start on a failure: a hub that
    cannot open what units send would dead-letter every such scan while doors light
    green. If the fleet's keys arrive while it runs and do not match, it stops the same
    way, leaving the scans it could not open with the broker.
    """
    worker = args.worker_index
    name = "hub" if worker is None else f"hub worker {worker}"
    # A worker names itself in each line: N workers write to one supervisor's output.
    who = "" if worker is None else f"{name} "
    config: HubConfig = args.hub_config
    logging.basicConfig(
        level=config.logging.level,
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
    )
    tls_files(args)  # refuses no host, or plain MQTT across the network without --insecure
    _refuse_on_failures(name, preflight(config, reach_broker=False))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    mismatch: list[str] = []

    def on_key_mismatch(problems: list[str]) -> None:
        mismatch.extend(problems)
        stop.set()

    try:
        hub = HubAssembly(config, worker=worker)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    with hub.running(on_key_mismatch=on_key_mismatch) as parts:
        if not parts.service.wait_connected(30):
            print(f"{name}: no broker yet; retrying in the background", file=sys.stderr)
        if parts.web is not None and not parts.web.wait_started(30):
            raise UsageError(f"the web server did not start on {config.http.listen}")
        if not mismatch:
            # Scripts (the demo, tests) and the supervisor wait for this line.
            scheme = "https" if config.http.cert_file else "http"
            http = f" {scheme}={config.http.listen}" if config.http.listen else ""
            ready = "hub ready" if worker is None else ready_line(worker)
            print(
                f"{ready}: db={shown_url(args.db)} broker={config.broker.host}:"
                f"{config.broker.effective_port}{http}",
                flush=True,
            )
            _wait(
                stop,
                parts.ingestor.counters,
                name,
                config.ingest.report_every_s,
                worker is not None,
            )
        counters = describe(parts.ingestor.counters)
    if mismatch:
        print(f"{name} stopped: {_MISMATCH}: {'; '.join(mismatch)}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    print(f"{name} stopped: {counters}", flush=True)
    return 0


_MISMATCH = "the fleet's keys do not match this hub's; scans it cannot open stay with the broker"
# EXIT_REFUSED (78): ``serve`` refused to start (or stopped) on a failed check; systemd
# does not restart it (``RestartPreventExitStatus=78`` in deploy/doorscan-hub.service),
# and a supervisor stops its other workers: only a fix will help.


def _refuse_on_failures(name: str, checks: list[Check]) -> None:
    failed = failures(checks)
    if failed:
        for line in render(checks):
            print(line, file=sys.stderr)
        raise RefusedToStart(
            f"{name} refuses to start: "
            + "; ".join(f"{check.name}: {check.detail}" for check in failed)
        )


def _wait(
    stop: threading.Event, counters: IngestCounters, name: str, every_s: float, worker: bool
) -> None:
    """Until `stop`: report the counters when due and moved; a worker also watches its
    supervisor, and stops if it is gone (nobody would restart or stop it otherwise)."""
    parent = os.getppid()
    last = describe(counters)
    due = time.monotonic() + every_s
    while True:
        # Polled, never stop.wait(timeout): see hub.workers.WorkerPool.run (the signal
        # handler's stop.set() would deadlock on the event's lock held by this thread).
        time.sleep(min(0.2, every_s) if every_s > 0 else 0.2)
        if stop.is_set():
            return
        if worker and supervisor_gone(parent):
            logging.getLogger(__name__).error("the supervisor is gone; this worker stops")
            return
        if every_s > 0 and time.monotonic() >= due:
            due = time.monotonic() + every_s
            # The paho thread moves these counters; describe() copies them in C under
            # the GIL, so a half-updated dict is never printed.
            now = describe(counters)
            if now != last:
                last = now
                print(f"{name} counters: {now}", flush=True)


def _run_supervisor(args: argparse.Namespace) -> int:
    """`--workers N`: start N workers of this command and keep them running."""
    if "http" in args.flags_given:
        raise UsageError(
            "--http runs in one process: with --workers, run `doorscan-hub web --http ...` "
            "beside the workers"
        )
    if args.http:
        # From the config file, which `web` beside the workers reads too: not an error.
        print(
            f"http.listen {args.hub_config.http.listen}: served by `doorscan-hub web "
            "--config ...` beside the workers, not by them",
            file=sys.stderr,
        )
    tls = tls_files(args)
    if tls is not None:
        _check_worker_tls(tls, args.workers)
    # Opened (and migrated) once here, before N workers race to do it, and checked, so
    # that a wrong database, vault key or seal key is one clear error instead of N
    # workers refusing in turn.
    with open_store(args.db, args.vault_key, must_exist=False):
        pass
    _refuse_on_failures("hub", preflight(args.hub_config, reach_broker=False))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pool = WorkerPool(lambda index: _worker_argv(args, tls, index), args.workers)

    def announce() -> None:
        pool.say(
            f"hub ready: db={shown_url(args.db)} broker={args.broker_host}:{args.broker_port} "
            f"workers={args.workers}"
        )

    code = pool.run(stop, announce)
    pool.say(f"hub stopped: workers={args.workers} restarts={pool.restarts}")
    return code


def _check_worker_tls(tls: TlsFiles, workers: int) -> None:
    """Refuse TLS files that N workers cannot use, before any worker starts: a worker
    without its files would only crash and be restarted, over and over."""
    shared = [
        f"{option} {path}"
        for option, path in (("--cert-file", tls.cert_file), ("--key-file", tls.key_file))
        if WORKER_PLACEHOLDER not in str(path)
    ]
    if shared:
        raise UsageError(
            f"{' and '.join(shared)}: with --workers each worker needs its own certificate "
            "(the broker makes the certificate's CN the client id, so workers sharing one "
            f"would throw each other off); put {WORKER_PLACEHOLDER} in --cert-file and "
            f"--key-file, e.g. broker/hub-{WORKER_PLACEHOLDER}-cert.pem, for the files "
            "`provisioning broker-files --hub-workers N` writes"
        )
    cert, key = _client_pair(tls)
    missing = [
        str(path)
        for index in range(1, workers + 1)
        for path in (worker_path(cert, index), worker_path(key, index))
        if not path.is_file()
    ]
    if missing:
        raise UsageError(
            f"no such file: {', '.join(missing)}; `provisioning broker-files "
            f"--hub-workers {workers}` issues a certificate for each of {workers} workers"
        )


def _worker_argv(args: argparse.Namespace, tls: TlsFiles | None, index: int) -> list[str]:
    """This `serve` command as worker `index` runs it. Every serve option but --http and
    --workers must be passed on here (the vault key also reaches it by the environment)."""
    argv = [sys.executable, "-m", "hub", "serve", "--worker-index", str(index)]
    argv += ["--db", args.db, "--broker-host", args.broker_host]
    argv += ["--broker-port", str(args.broker_port), "--client-id", args.client_id]
    argv += ["--report-every-s", str(args.report_every_s), "--log-level", args.log_level]
    argv += ["--max-scans-per-minute", str(args.max_scans_per_minute)]
    if args.insecure:
        argv.append("--insecure")
    if args.vault_key is not None:
        argv += ["--vault-key", str(args.vault_key)]
    for key in args.card_keys:
        argv += ["--card-key", str(key)]
    if args.seal_key is not None:
        argv += ["--seal-key", str(args.seal_key)]
    if tls is not None:
        cert, key = _client_pair(tls)
        argv += ["--ca-file", str(tls.ca_file)]
        argv += ["--cert-file", str(worker_path(cert, index))]
        argv += ["--key-file", str(worker_path(key, index))]
    return argv


def _client_pair(tls: TlsFiles) -> tuple[Path, Path]:
    """The hub's certificate and key (`tls_files` gives all three files or none)."""
    if tls.cert_file is None or tls.key_file is None:
        raise UsageError("--ca-file, --cert-file and --key-file go together")
    return tls.cert_file, tls.key_file


def _metrics() -> HubMetrics:
    from hub.web.metrics import HubMetrics  # only with --http: prometheus_client is not free

    return HubMetrics()
