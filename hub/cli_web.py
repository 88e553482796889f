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
from datetime import UTC, datetime
from pathlib import Path

from hub.access import Role
from hub.auth import create_user, issue_api_token, set_active, unlock
from hub.cli_common import (
    Commands,
    UsageError,
    cli_principal,
    db_parent,
    http_address,
    open_store,
    where,
)
from hub.config import DEFAULT_HTTP, http_problem, shown_url
from hub.login_throttle import LoginThrottle
from hub.web.server import WebThread

__all__ = [
    "add_token",
    "add_user",
    "add_http_options",
    "http_parent",
    "add_web",
    "read_password",
]


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
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_HTTP}; HTTPS with --http-cert/--http-key)",
    )
    add_http_options(parser)
    parser.add_argument("--log-level", help="logging level (default INFO)")
    parser.set_defaults(run=_run_web)


def http_parent() -> argparse.ArgumentParser:
    """``--http`` for `serve` and `check` (`web` has its own, with a default)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--http",
        type=http_address,
        metavar="HOST:PORT",
        help="also serve the web API and dashboard here (e.g. 127.0.0.1:8080)",
    )
    add_http_options(parent)
    return parent


def add_http_options(parser: argparse.ArgumentParser) -> None:
    """HTTPS files and the proxies believed: what `web` and `serve --http` share."""
    parser.add_argument("--http-cert", type=Path, metavar="PEM", help="HTTPS certificate")
    parser.add_argument("--http-key", type=Path, metavar="PEM", help="HTTPS private key")
    parser.add_argument(
        "--http-insecure",
        action="store_true",
        default=None,
        help="allow plain HTTP on an address other machines reach",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
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
    http = args.hub_config.http
    address = args.http or http_address(DEFAULT_HTTP)
    problem = http_problem(http.model_copy(update={"listen": where(address)}))
    if problem:
        raise UsageError(problem)
    with open_store(args.db, args.vault_key, must_exist=False) as store:
        web = WebThread(
            store,
            address,
            metrics=None,
            trusted_proxies=http.trusted_proxies,
            cert_file=http.cert_file,
            key_file=http.key_file,
            releases_dir=http.releases_dir,
        )
        try:
            if not web.wait_started(30):
                raise UsageError(f"the web server did not start on {where(address)}")
            scheme = "https" if http.cert_file else "http"
            print(f"hub web ready: db={shown_url(args.db)} {scheme}={where(address)}", flush=True)
            stop.wait()
        finally:
            web.close()
    print("hub web stopped", flush=True)
    return 0


def _now() -> datetime:
    return datetime.now(UTC)
