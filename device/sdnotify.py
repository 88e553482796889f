"""Tell systemd how the unit is doing: ready, alive (the watchdog), status, stopping.

systemd's notify protocol (sd_notify(3)) is one datagram of ``KEY=value`` lines
sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET``; a name starting with ``@``
is in the abstract namespace (a NUL byte in its place). With ``Type=notify`` the
service counts as started only after ``READY=1``; with ``WatchdogSec=`` systemd
sets ``$WATCHDOG_USEC`` and restarts the service when ``WATCHDOG=1`` stops coming.

The unit pets the watchdog from its frame loop, so a camera ``read()`` that blocks
forever (a wedged driver) stops the petting and systemd restarts the unit: the one
stall the loop itself cannot see. Without ``$NOTIFY_SOCKET`` (run by hand, in
tests) every call is a no-op. A failed send is logged once and never raised: the
door must go on scanning even if systemd cannot be told.

    >>> notifier = SystemdNotifier.from_environment()          # doctest: +SKIP
    >>> notifier.ready("scanning")
    >>> while scanning:
    ...     notifier.watchdog()        # sent at most every WatchdogSec / 2
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """How often to pet: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled advises).

    None when there is no watchdog, or when ``$WATCHDOG_PID`` names another process
    (the variable was inherited by a child that systemd is not watching).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op when `address` is None."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_every_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_every_s = watchdog_every_s
        self._monotonic = monotonic
        self._last_pet: float | None = None
        self._warned = False
        self._socket: socket.socket | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sent = 0  # datagrams sent, for tests and the self-test

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_every_s=watchdog_interval_s(env))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False if not sent (or no systemd)."""
        if self._socket is None or self.address is None:
            return False
        # "@name" is the abstract namespace: the address starts with a NUL byte there.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is done (``Type=notify`` services count as started from here)."""
        self._last_pet = self._monotonic()
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """A one-line state shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Pet the watchdog if half its period has passed since the last pet; True if sent.

        Cheap enough to call for every frame: the clock is read, nothing else, until due.
        """
        if self._socket is None or self.watchdog_every_s is None:
            return False
        now = self._monotonic()
        if self._last_pet is not None and now - self._last_pet < self.watchdog_every_s:
            return False
        self._last_pet = now
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun (so systemd does not count the wind-down as a hang)."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
