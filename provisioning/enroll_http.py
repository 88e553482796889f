"""The enrollment server's transport: `EnrollmentService` on HTTPS, stdlib only.

`provisioning.enroll_server` decides; this module only moves bytes: TLS with a
certificate from the fleet CA (the unit checks it against the CA it was installed
with), one POST endpoint, a body size cap, a timeout for clients that stall, JSON
answers, and one log line per request (never the body, which holds the code).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from doorscan import enrollment as contract
from doorscan.lifecycle import Closeable
from provisioning.enroll_server import EnrollmentService

__all__ = ["REQUEST_TIMEOUT_S", "EnrollmentServer"]

log = logging.getLogger(__name__)

BodyHook = Callable[[bytes], None]
_DRAIN_LIMIT_BYTES = 256 * 1024
REQUEST_TIMEOUT_S = 10.0  # a client that stalls mid-handshake or mid-body is dropped


# -- HTTP over TLS ----------------------------------------------------------------------


class _TlsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        service: EnrollmentService,
        on_body: BodyHook | None,
    ) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.service = service
        self.on_body = on_body

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # The handshake runs in the request's thread (see _Handler.setup), so a client
        # that connects and says nothing cannot hold up the accept loop.
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake or a dropped connection: one line, not socketserver's traceback.
        log.info("connection from %s dropped", client_address[0], exc_info=False)


class _Handler(BaseHTTPRequestHandler):
    server: _TlsHTTPServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "doorscan-enroll"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.do_handshake()

    def do_POST(self) -> None:
        if self.path != contract.ENROLL_PATH:
            self._answer(404, {"error": "not_found", "reason": f"POST {contract.ENROLL_PATH}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"error": "length_required", "reason": "send Content-Length"})
            return
        if not 0 <= length <= contract.MAX_REQUEST_BYTES:
            # A modest excess is read and dropped so the client gets the answer (closing on
            # unread data resets the connection); a huge one is not worth reading.
            if length <= _DRAIN_LIMIT_BYTES:
                self.rfile.read(length)
            self._answer(413, {"error": "too_large", "reason": "the request body is too large"})
            return
        body = self.rfile.read(length)
        if self.server.on_body is not None:
            self.server.on_body(body)
        try:
            status, payload = self.server.service.handle(body, self.client_address[0])
        except Exception:  # a bug or a full disk: logged here, never shown to the client
            log.exception("enrollment request failed")
            status, payload = 500, {"error": "internal", "reason": "the server failed; try again"}
        self._answer(status, payload)

    def do_GET(self) -> None:
        self._answer(405, {"error": "method", "reason": f"only POST {contract.ENROLL_PATH}"})

    do_PUT = do_DELETE = do_HEAD = do_GET

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no secret (the code is in the body); route it to logging.
        log.info("%s %s", self.client_address[0], format % args)


class EnrollmentServer(Closeable):
    """`EnrollmentService` on HTTPS. `start()` serves in a thread, `serve_forever()` here.

    `on_body` sees every request body as received (a test hook: it lets a test check
    what a unit actually sent).
    """

    def __init__(
        self,
        service: EnrollmentService,
        host: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        *,
        on_body: BodyHook | None = None,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert_file), str(key_file))
        self._httpd = _TlsHTTPServer((host, port), context, service, on_body)
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> EnrollmentServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="enroll-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Make `serve_forever` return (from a signal handler or another thread)."""
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
        self._httpd.server_close()
