"""Start `python -m hub serve` as a child process and wait until it is subscribed.

Used by `make demo` and the end-to-end tests; ``workers=N`` starts the supervisor of N
workers (`hub.workers`), ready once every worker is. The child writes to a log file, not
a pipe: nobody may read a pipe for a while, and a full pipe would stall the hub.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["HubProcess"]


class HubProcess:
    """`hub serve` in a child process; `stop()` ends it with SIGTERM (it finishes cleanly).

    `vault_key` is the hub's vault key file (`python -m hub init-vault`): required, since
    the hub has no default key.
    """

    def __init__(
        self,
        db: Path | str,
        host: str,
        port: int,
        log: Path,
        *,
        vault_key: Path,
        card_keys: Sequence[Path] = (),
        seal_key: Path | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        workers: int = 1,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`db` is a path or a locator (``postgresql://...``); `extra_args` go on the end."""
        self.log = log
        args = [
            sys.executable,
            "-m",
            "hub",
            "serve",
            "--db",
            str(db),
            "--vault-key",
            str(vault_key),
        ]
        args += ["--broker-host", host, "--broker-port", str(port)]
        for key in card_keys:
            args += ["--card-key", str(key)]
        if seal_key is not None:
            args += ["--seal-key", str(seal_key)]
        if workers != 1:
            args += ["--workers", str(workers)]
        args += extra_args
        with log.open("w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while not self._ready() and self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not become ready:\n{self.output()}")
            time.sleep(0.05)
        if self.proc.poll() is not None:
            raise RuntimeError(f"hub exited at start:\n{self.output()}")

    def _ready(self) -> bool:
        # A line that starts so: workers' own lines ("hub worker 2 ready") do not count.
        return any(line.startswith("hub ready") for line in self.output().splitlines())

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def ready_line(self) -> str:
        return next(line for line in self.output().splitlines() if line.startswith("hub ready"))

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s; returns the exit code.

        30 s: a supervisor gives its workers 20 s to stop before it kills them.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
