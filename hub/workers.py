"""`serve --workers N`: a supervisor process that keeps N hub worker processes running.

    doorscan-hub serve --workers 4 --db postgresql://hub@db/doorscan --broker-host mq

Why processes: ingest is Python (validation, parsing, sealing) under one GIL, and
each worker needs its own store connection anyway; N processes use N cores. Each
worker is an ordinary ``serve`` (`hub.cli_serve`) with its own store connection
(SQLite in WAL mode with a busy timeout, or PostgreSQL) and its own MQTT client id
(``doorscan-hub-<n>``). It takes scans through one MQTT shared subscription
(`hub.service.shared_scans_topic`), so the broker hands each batch to one worker
(Mosquitto: round robin over the group) and the load spreads.

The supervisor (`WorkerPool`) starts the workers, relays their output line by line to
its own, restarts a worker that dies (after 1 s, doubling up to 30 s while it keeps
dying young), forwards SIGTERM/SIGINT to them and exits when they have stopped.
Workers run in their own process group, so a Ctrl-C reaches them only through the
supervisor; a worker whose supervisor vanished (SIGKILL) stops by itself.

What happens to a dead worker's messages (read in Mosquitto 2.0.11's source,
``src/subs.c``, ``src/context.c``, ``src/database.c``; the MQTT 5 text is 4.8.2):

* The broker picks the group member at the head of its list and moves it to the
  back, whether that member is connected or not: a disconnected *persistent*
  session keeps getting its share of new batches, queued until it returns (EMQX
  does the same, emqx/emqx pull 1823). So workers use *clean* sessions
  (`hub.service.worker_client_factory`): a killed worker's socket closes, its
  session ends, and it leaves the group at once.
* The QoS 1 batches that worker had in flight or queued, not yet PUBACKed (the hub
  acks after commit), are deleted with its session (``db__messages_delete``). The
  standard says a broker SHOULD then give them to another member; Mosquitto 2.0
  does not (eclipse/mosquitto#2662, reported on 2.0.15, open). The test saw
  it: after the SIGKILL the units had to resend the batches that worker held.
* Nothing is lost all the same, because of the unit: it keeps each scan in its
  journal until the hub's own ack names it, and sends a batch with no ack again
  after ``ack_timeout_s`` (`device.mqtt_sync`); the resend reaches a live worker.
  A batch the dead worker had committed but not acked comes again too, and the
  store's insert, idempotent on ``scan_id``, stores nothing twice.
* With every worker down, scans published meanwhile reach no session at all; the
  units resend them once a worker is back.

Over TLS each worker needs a certificate of its own. The provisioned broker makes the
certificate's CN both the user name and the client id (``use_username_as_clientid``),
and a second client with a client id already connected throws the first one off: N
workers sharing the hub's certificate would keep disconnecting each other. So
``--cert-file`` and ``--key-file`` name a family of files with ``{n}`` in it
(``broker/hub-{n}-cert.pem``, written by ``provisioning broker-files --hub-workers N``),
and worker n gets ``hub-n-cert.pem``, CN ``doorscan-hub-n``, which the ACL gives the
hub's rights. The broker then also makes ``doorscan-hub-n`` its client id, whatever
``--client-id`` says.

``--workers 1`` (the default) keeps today's single process, persistent session and
plain subscription. A group of one is not strictly the same: ``$share`` is not MQTT
3.1.1 (Mosquitto takes it anyway, other 3.1.1 brokers need not); Mosquitto 2.0.11
does not carry a durable client's ``$share`` subscription over to its reconnected
connection (fixed in 2.0.12, ChangeLog: "Fix $share subscriptions not being
recovered for durable clients that reconnect"), which is one more reason the workers'
sessions are clean; and two hubs started apart on purpose would split the scans
instead of each storing all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "EXIT_REFUSED",
    "WORKER_PLACEHOLDER",
    "WorkerPool",
    "ready_line",
    "started_line",
    "supervisor_gone",
    "worker_path",
]

ArgvFor = Callable[[int], Sequence[str]]
# In --cert-file/--key-file: replaced by the worker's number (see the module docstring).
WORKER_PLACEHOLDER = "{n}"


def worker_path(template: Path, index: int) -> Path:
    """Worker `index`'s file: ``broker/hub-{n}-cert.pem`` -> ``broker/hub-2-cert.pem``."""
    # str.replace, not format(): any other brace in a path is the path's own.
    return Path(str(template).replace(WORKER_PLACEHOLDER, str(index)))


def ready_line(index: int) -> str:
    """What worker `index` prints once it is subscribed (the supervisor waits for it)."""
    return f"hub worker {index} ready"


def started_line(index: int, pid: int) -> str:
    return f"hub worker {index} started: pid {pid}"


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    relay: threading.Thread | None = None
    restart_at: float | None = None
    delay_s: float = 0.0


class WorkerPool:
    """N worker processes made by `argv_for(index)` (index from 1); `run()` until stopped.

    A worker that lived `stable_s` or longer is restarted after `backoff_min_s`; one
    that died younger waits twice as long as last time, up to `backoff_max_s`.
    """

    def __init__(
        self,
        argv_for: ArgvFor,
        count: int,
        *,
        out: IO[str] | None = None,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_s: float = 60.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        if count < 1:
            raise ValueError("a pool needs at least one worker")
        self._argv_for = argv_for
        self._slots = [_Slot(i) for i in range(1, count + 1)]
        self._out = out or sys.stdout
        self._out_lock = threading.Lock()
        self._backoff = (backoff_min_s, backoff_max_s)
        self._stable_s = stable_s
        self._stop_timeout_s = stop_timeout_s
        self.restarts = 0
        self.refused = False

    def say(self, line: str) -> None:
        """One whole line on the supervisor's output (workers' lines never cut into it)."""
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def run(self, stop: threading.Event, on_ready: Callable[[], None]) -> int:
        """Start the workers, call `on_ready` once all are subscribed, keep them up until
        `stop` is set, then stop them; returns 0 when every worker ended cleanly."""
        for slot in self._slots:
            self._start(slot)
        announced = False
        while True:
            # Polled, never stop.wait(timeout): the SIGTERM handler calls stop.set() in
            # this same thread, and should it run just as Event.wait() holds the event's
            # (non-reentrant) lock, it would wait on that lock forever.
            time.sleep(0.1)
            if stop.is_set():
                break
            now = time.monotonic()
            for slot in self._slots:
                self._check(slot, now)
            if self.refused:
                self._stop_all()
                return EXIT_REFUSED
            if not announced and all(slot.ready.is_set() for slot in self._slots):
                announced = True
                on_ready()
        return self._stop_all()

    def _start(self, slot: _Slot) -> None:
        slot.ready.clear()
        slot.restart_at = None
        # Own process group: a terminal's Ctrl-C goes to the supervisor alone, which
        # then stops the workers in order instead of all of them racing it.
        slot.proc = subprocess.Popen(
            list(self._argv_for(slot.index)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        self.say(started_line(slot.index, slot.proc.pid))
        slot.relay = threading.Thread(
            target=self._relay, args=(slot, slot.proc), name=f"hub-worker-{slot.index}-out"
        )
        slot.relay.start()

    def _relay(self, slot: _Slot, proc: subprocess.Popen[bytes]) -> None:
        # Read to the end, always: a worker blocked on a full pipe would stop ingesting.
        assert proc.stdout is not None
        ready = ready_line(slot.index)
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.say(line)
            if line.startswith(ready):
                slot.ready.set()
        proc.stdout.close()

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                self.restarts += 1
                self._start(slot)
            return
        assert slot.proc is not None
        code = slot.proc.poll()
        if code is None:
            return
        if slot.relay is not None:
            slot.relay.join(5)  # its last words (a traceback) come before ours
        if code == EXIT_REFUSED:
            # The worker refused its config (keys that cannot open what the fleet sends):
            # a restart would only refuse again, so the whole pool stops and says so.
            self.say(f"hub worker {slot.index} refused to run (exit {code}); stopping all")
            self.refused = True
            return
        low, high = self._backoff
        lived = now - slot.started_at
        slot.delay_s = low if lived >= self._stable_s else min(high, max(low, slot.delay_s * 2))
        slot.restart_at = now + slot.delay_s
        self.say(
            f"hub worker {slot.index} (pid {slot.proc.pid}) ended with {_exit_text(code)} "
            f"after {lived:.1f} s; restarting in {slot.delay_s:g} s"
        )

    def _stop_all(self) -> int:
        live = [s for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for slot in live:
            assert slot.proc is not None
            slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        worst = 0
        for slot in live:
            assert slot.proc is not None
            try:
                code = slot.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"hub worker {slot.index} did not stop in time; killing it")
                slot.proc.kill()
                code = slot.proc.wait()
            # -SIGTERM: our own signal reached a worker still starting, before it set
            # its handler; it had taken nothing yet, so that is a clean stop too.
            if code not in (0, -signal.SIGTERM):
                self.say(f"hub worker {slot.index} ended with {_exit_text(code)}")
                worst = 1
        for slot in self._slots:
            if slot.relay is not None:
                slot.relay.join(5)
        return worst


EXIT_REFUSED = 78
"""A worker's (and ``serve``'s) exit code for "refused to start, or stopped, on a failed
check" (sysexits' EX_CONFIG): only a fix to the config helps, so neither systemd
(``RestartPreventExitStatus=78``) nor a supervisor restarts it. Other errors (a database
not up yet: exit 2) are restarted as before."""


def _exit_text(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def supervisor_gone(parent_pid: int) -> bool:
    """True once the process that started us is gone (we were re-parented)."""
    return os.getppid() != parent_pid
