"""`WebThread`: uvicorn serving the hub's web app in a thread of the hub's process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["WebThread"]


class WebThread:
    """uvicorn serving `hub.web.app.create_app(store)` in a thread; `close()` stops it.

    uvicorn installs no signal handlers outside the main thread, so SIGTERM stays with
    the command (`web`, `serve`), which calls `close()`: uvicorn stops accepting, lets
    requests in flight finish, and the thread is joined before the store is closed.
    (Run in the main thread, uvicorn would re-raise SIGTERM after its shutdown and the
    process would end by the signal, not with exit code 0.)
    """

    def __init__(
        self,
        store: Any,
        address: tuple[str, int],
        metrics: Any,
        trusted_proxies: Sequence[str] = (),
        cert_file: Path | None = None,
        key_file: Path | None = None,
        releases_dir: Path | None = None,
    ) -> None:
        import uvicorn  # imported here: the other commands do not need a web server

        from hub.web.app import create_app

        host, port = address
        app = create_app(store, metrics=metrics, releases_dir=releases_dir)
        # uvicorn's access log writes every URL with its query string; the app logs its
        # own line per request without it (hub.web.app). X-Forwarded-For and -Proto are
        # believed only from the proxies named: from anyone else they are ignored, so a
        # client cannot pick the address the login throttle and the audit log see.
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies) or None,
            # HTTPS of its own: the session cookie is then Secure (hub.web.deps).
            ssl_certfile=str(cert_file) if cert_file else None,
            ssl_keyfile=str(key_file) if key_file else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="hub-web", daemon=True)
        self._thread.start()

    def wait_started(self, timeout_s: float) -> bool:
        """True once uvicorn listens; False if it failed (port taken) or timed out."""
        deadline = time.monotonic() + timeout_s
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                return False  # uvicorn logged why (e.g. the port is taken)
            time.sleep(0.05)
        return self._server.started

    def close(self) -> None:
        """Stop and join (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            logging.getLogger(__name__).error("the web server did not stop within 30 s")
