"""`web`, `user add`, `user disable`, `token create`: the hub's HTTP side on the command line.

    doorscan-hub user add --id ytepleiku --name "Y tế Pleiku" --role tracer \\
        --password-file /run/secrets/ytepleiku.pw        # or --password-stdin
    doorscan-hub user add --id cho-pleiku-owner --name "Chủ chợ" --role venue \\
        --venue cho-pleiku --password-stdin < pw.txt
    doorscan-hub token create --user ytepleiku --days 90  # prints the token, once
    doorscan-hub web --http 127.0.0.1:8080                 # the API and dashboard only
    doorscan-hub serve --http 127.0.0.1:8080 ...           # the same beside MQTT ingest

A password is never an argument (it would show in ``ps`` and in shell history): it
comes from a file (its first line) or from stdin. The token is printed on stdout and
kept nowhere (the hub stores its SHA-256 only): copy it then or make another.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.access import Role
from hub.auth import create_user, issue_api_token, set_active, unlock
from hub.cli_common import Commands, UsageError, cli_principal, db_parent, open_store
from hub.login_throttle import LoginThrottle

__all__ = [
    "WebThread",
    "add_token",
    "add_user",
    "add_trusted_proxy",
    "add_web",
    "http_address",
    "read_password",
    "where",
]


def http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port), for ``--http``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def read_password(args: argparse.Namespace) -> str:
    """The password from ``--password-file`` (its first line) or stdin."""
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the password file: {exc}") from None
    else:
        text = sys.stdin.readline()
    return text.splitlines()[0] if text.splitlines() else ""


# -- user ------------------------------------------------------------------------------------


def add_user(commands: Commands) -> None:
    parser = commands.add_parser(
        "user", help="operators of the web API and dashboard (add, disable, enable, unlock)"
    )
    actions = parser.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        parents=[db_parent()],
        help="add an operator with a role",
        description="Add an operator. The venue role needs --venue, a registered venue.",
    )
    add.add_argument("--id", dest="user_id", required=True, help="login id (like a venue id)")
    add.add_argument("--name", required=True, help="the operator's name as shown")
    add.add_argument(
        "--role", required=True, choices=[str(r) for r in Role], help="what they may read"
    )
    add.add_argument("--venue", help="the venue of the venue role")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--password-file", type=Path, metavar="FILE", help="first line is it")
    source.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    add.set_defaults(run=_run_user_add)
    disable = actions.add_parser(
        "disable",
        parents=[db_parent()],
        help="disable an operator: their sessions and tokens stop working at once",
    )
    disable.add_argument("--id", dest="user_id", required=True)
    disable.set_defaults(run=_run_user_disable, active=False)
    enable = actions.add_parser(
        "enable", parents=[db_parent()], help="enable a disabled operator again"
    )
    enable.add_argument("--id", dest="user_id", required=True)
    enable.set_defaults(run=_run_user_disable, active=True)
    unlock_parser = actions.add_parser(
        "unlock",
        parents=[db_parent()],
        help="let an operator log in again after too many failed logins",
        description="Forget the failed logins of a user id (anyone who knows a login id can "
        "lock it by failing; the audit log's login_failed entries say from where).",
    )
    unlock_parser.add_argument("--id", dest="user_id", required=True)
    unlock_parser.set_defaults(run=_run_user_unlock)


def _run_user_add(args: argparse.Namespace) -> int:
    password = read_password(args)
    with open_store(args.db, args.vault_key, must_exist=False) as opened:
        store = opened
        user = create_user(
            store,
            args.user_id,
            args.name,
            Role(args.role),
            args.venue,
            password,
            _now(),
            by=cli_principal(),
        )
    where = f" of {user.venue_id}" if user.venue_id else ""
    print(f"user {user.user_id} added: {user.role}{where}")
    return 0


def _run_user_disable(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as opened:
        if opened.user(args.user_id) is None:
            raise UsageError(f"no user {args.user_id!r}")
        set_active(opened, args.user_id, args.active, _now(), cli_principal())
    print(f"user {args.user_id} {'enabled' if args.active else 'disabled'}")
    return 0


def _run_user_unlock(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as opened:
        if opened.user(args.user_id) is None:
            raise UsageError(f"no user {args.user_id!r}")
        forgotten = unlock(opened, LoginThrottle(), args.user_id, _now(), cli_principal())
    print(f"user {args.user_id} unlocked ({forgotten} failed logins forgotten)")
    return 0


# -- token -----------------------------------------------------------------------------------


def add_token(commands: Commands) -> None:
    parser = commands.add_parser("token", help="API tokens for scripts")
    actions = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        parents=[db_parent()],
        help="make an API token for a user; it is printed once",
    )
    create.add_argument("--user", required=True, help="the user id")
    create.add_argument("--days", type=int, default=90, help="lifetime in days (default 90)")
    create.set_defaults(run=_run_token_create)


def _run_token_create(args: argparse.Namespace) -> int:
    with open_store(args.db, args.vault_key, must_exist=True) as opened:
        issued = issue_api_token(opened, args.user, args.days, _now(), by=cli_principal())
    print(issued.token)
    print(
        f"token for {issued.user.user_id} ({issued.user.role}) until "
        f"{issued.expires_at.isoformat()}; it is not shown again",
        file=sys.stderr,
    )
    return 0


# -- web -------------------------------------------------------------------------------------


def add_web(commands: Commands) -> None:
    parser = commands.add_parser(
        "web",
        parents=[db_parent()],
        help="serve the HTTP API and dashboard (no MQTT; see serve --http for both)",
    )
    parser.add_argument(
        "--http",
        type=http_address,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080; put a TLS proxy in front)",
    )
    add_trusted_proxy(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.set_defaults(run=_run_web)


def add_trusted_proxy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a reverse proxy whose X-Forwarded-For/-Proto headers are believed (repeatable; "
        "default none: the TCP peer is the client)",
    )


def _run_web(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_store(args.db, args.vault_key, must_exist=False) as store:
        web = WebThread(store, args.http, metrics=None, trusted_proxies=args.trusted_proxy)
        try:
            if not web.wait_started(30):
                raise UsageError(f"the web server did not start on {where(args.http)}")
            print(f"hub web ready: db={args.db} http={where(args.http)}", flush=True)
            stop.wait()
        finally:
            web.close()
    print("hub web stopped", flush=True)
    return 0


def where(address: tuple[str, int]) -> str:
    """(host, port) as a URL authority: ``127.0.0.1:8080``, ``[::1]:8080``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    ) -> None:
        import uvicorn  # imported here: the other commands do not need a web server

        from hub.web.app import create_app

        host, port = address
        app = create_app(store, metrics=metrics)
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


def _now() -> datetime:
    return datetime.now(UTC)
