"""A private MQTT broker on a free loopback port, for tests and `make demo`.

Starts the real Mosquitto binary with a config of our own (no persistence, loopback
only). When Mosquitto is not installed, `make demo` can fall back to an embedded
amqtt broker; tests always use Mosquitto, the peer a real deployment has.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from doorscan.wire.limits import BROKER_MAX_INFLIGHT

__all__ = ["LocalBroker", "find_mosquitto", "free_port"]


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary; Debian puts it in /usr/sbin, often not on PATH."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class LocalBroker:
    """A Mosquitto process that the caller owns: start, kill, restart, stop.

    >>> with LocalBroker() as broker:          # doctest: +SKIP
    ...     print(broker.host, broker.port)
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="doorscan-broker-"))
        self.config_path = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"max_inflight_messages {BROKER_MAX_INFLIGHT}\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + extra_config
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalBroker:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not _wait_for_port(self.port, 10.0):
            self.stop()
            raise RuntimeError(f"mosquitto did not open port {self.port}; see {self.log_path}")
        return self

    def kill(self) -> None:
        """SIGKILL, as a power cut or OOM kill would: no clean shutdown, nothing saved."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
