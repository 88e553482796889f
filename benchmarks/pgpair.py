"""PostgreSQL clusters of a test's own: a primary with a synchronous standby, or one alone.

    >>> with PgPair.start() as pair:                        # doctest: +SKIP
    ...     store = PostgresStore(pair.url, vault=vault)    # both hosts, read-write wanted
    ...     pair.kill_primary()                             # a crash: no shutdown checkpoint
    ...     pair.promote_standby()                          # the standby takes writes

Each cluster is made by ``initdb`` in a folder of its own under the system's temporary
folder, listens on 127.0.0.1 only (a free port, `doorscan.localbroker.free_port`) and on
a Unix socket in that folder, and trusts every local connection: a test's throwaway
server, nothing a deployment should copy. The standby is a ``pg_basebackup -R`` of the
primary (a streaming replica, hot standby on), and the primary waits for it at each
commit (``synchronous_standby_names`` names it, ``synchronous_commit = on``): a commit
that returned is on the standby's disk too.

``initdb`` refuses to run as root. A root test process runs every server command as
the ``postgres`` user (``runuser``) in a folder that user owns; otherwise it runs them
as itself. The folder is under ``/tmp``, not pytest's ``tmp_path``: that one is private
to root, and ``postgres`` could not reach into it.

Start-up costs a few seconds (two ``initdb``-sized copies, small ``shared_buffers``;
``fsync`` stays on, so that commit costs are real). `close()` stops both servers and
removes the folder, whatever state the test left them in.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import psycopg

from doorscan.lifecycle import Closeable
from doorscan.localbroker import free_port

__all__ = ["STANDBY_NAME", "PgCluster", "PgPair", "PgUnavailable", "find_pg_bin"]

STANDBY_NAME = "doorscan_standby"
"""The standby's ``cluster_name``: its walreceiver's application name, which the
primary's ``synchronous_standby_names`` matches."""

_DATABASE = "doorscan"
_SERVER_USER = "postgres"  # the OS account a root test runs the servers as
_TIMEOUT_S = 60
_BINARIES = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or no account to run them as)."""


def find_pg_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``pg_basebackup``, or None.

    ``$DOORSCAN_PG_BIN`` first; then Debian's ``/usr/lib/postgresql/<version>/bin``,
    newest version first (Debian keeps them off ``PATH``); then ``PATH``.
    """
    given = os.environ.get("DOORSCAN_PG_BIN")
    # The folder asked for, or none: never another version behind the caller's back.
    candidates = [Path(given)] if given else _installed_bin_dirs()
    return next(
        (c for c in candidates if all((c / b).is_file() for b in _BINARIES)),
        None,
    )


def _installed_bin_dirs() -> list[Path]:
    candidates = []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    return candidates


class _Runner:
    """Runs the server binaries: as ``postgres`` when this process is root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_server_user = os.geteuid() == 0
        if self.as_server_user:
            try:
                pwd.getpwnam(_SERVER_USER)
            except KeyError:
                raise PgUnavailable(
                    f"running as root and there is no {_SERVER_USER!r} account to run "
                    "PostgreSQL as (initdb refuses root); apt-get install postgresql makes it"
                ) from None

    def own(self, path: Path) -> None:
        """Give `path` to the account the servers run as."""
        if self.as_server_user:
            shutil.chown(path, _SERVER_USER, _SERVER_USER)

    def run(self, binary: str, *args: str) -> str:
        argv = [str(self.bin_dir / binary), *args]
        if self.as_server_user:
            argv = ["runuser", "-u", _SERVER_USER, "--", *argv]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=_TIMEOUT_S * 2,
            # A locale the servers can always use, whatever the test's environment has.
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done.stdout


class PgCluster:
    """One PostgreSQL server: its data folder, its port, its log."""

    host = "127.0.0.1"

    def __init__(self, runner: _Runner, folder: Path, name: str) -> None:
        self._runner = runner
        self.name = name
        self.data = folder / name
        self.log = folder / f"{name}.log"
        self.socket_dir = folder
        self.port = free_port()
        self._settings: dict[str, str] = {}

    def url(self, database: str = _DATABASE) -> str:
        """This server alone, as the superuser (trusted: no password)."""
        return f"postgresql://{_SERVER_USER}@{self.host}:{self.port}/{database}"

    def init(self) -> None:
        # --no-sync: a test's cluster need not survive a power cut of the test machine;
        # the server's own fsync stays on, so that commits cost what they cost.
        self._runner.run(
            "initdb", "-D", str(self.data), "-U", _SERVER_USER, "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self, **settings: str) -> None:
        """Start with `settings` on the command line, on top of the small-server ones.

        Role settings (which standby to wait for) go on the command line, never into
        the data folder's config files: ``pg_basebackup`` copies those, and a promoted
        standby that inherited ``synchronous_standby_names`` would wait forever for a
        standby of its own at every commit.
        """
        self._settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "shared_buffers": "16MB",
            "max_connections": "40",
            "max_wal_senders": "4",
            "cluster_name": self.name,
            **settings,
        }
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        # pg_ctl hands -o to a shell: each setting quoted.
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in self._settings.items())
        try:
            self._runner.run(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                "-w", "-t", str(_TIMEOUT_S), "-o", options,
            )  # fmt: skip
        except RuntimeError as exc:
            # The log goes with the folder when the pair is closed: say what it said.
            raise RuntimeError(f"{exc}\n{self.name}'s log:\n{self.log_text()[-3000:]}") from None

    def restart(self) -> None:
        """Start again after `kill`, with the settings of the first start (crash recovery)."""
        self._pg_ctl_start()

    def kill(self) -> None:
        """Stop at once, as a crash does: every backend ends, no shutdown checkpoint."""
        self._runner.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def promote(self) -> None:
        """A standby becomes a primary; returns once it takes writes (``pg_ctl -w``)."""
        self._runner.run("pg_ctl", "promote", "-D", str(self.data), "-w", "-t", str(_TIMEOUT_S))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        if self.running():
            # Failing only if it is gone already (a pid file that outlived a crash).
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                self._runner.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def sql(
        self, statement: str, params: Sequence[object] = (), *, database: str = _DATABASE
    ) -> list[tuple[object, ...]]:
        """One statement on this server alone, autocommit; its rows."""
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class PgPair(Closeable):
    """A primary and its synchronous standby; `url` names both, read-write wanted."""

    def __init__(self, folder: Path, runner: _Runner) -> None:
        self.folder = folder
        self.primary = PgCluster(runner, folder, "primary")
        self.standby = PgCluster(runner, folder, STANDBY_NAME)
        self._runner = runner
        self._with_standby = True

    @property
    def url(self) -> str:
        """Both servers in one libpq URL: a connection goes to whichever takes writes."""
        members = (self.primary, self.standby) if self._with_standby else (self.primary,)
        hosts = ",".join(f"{c.host}:{c.port}" for c in members)
        # connect_timeout: a host that does not answer is given up on after this, and
        # the next tried (a refused port, as here, is given up on at once).
        return (
            f"postgresql://{_SERVER_USER}@{hosts}/{_DATABASE}"
            "?target_session_attrs=read-write&connect_timeout=5"
        )

    @classmethod
    def start(cls, *, standby: bool = True) -> PgPair:
        """Make and start the clusters; `standby=False` gives a primary alone (a baseline).

        Raises `PgUnavailable` when the binaries are not installed.
        """
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise PgUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup); "
                "apt-get install postgresql, or set DOORSCAN_PG_BIN"
            )
        runner = _Runner(bin_dir)
        # /tmp itself for a root test: a $TMPDIR of root's own may be closed to postgres.
        parent = "/tmp" if runner.as_server_user else None  # noqa: S108 - see above
        folder = Path(tempfile.mkdtemp(prefix="doorscan-pg-", dir=parent))
        runner.own(folder)
        pair = cls(folder, runner)
        try:
            pair._start(with_standby=standby)
        except BaseException:
            pair.close()
            raise
        return pair

    def _start(self, *, with_standby: bool) -> None:
        self._with_standby = with_standby
        primary = self.primary
        primary.init()
        settings = {"synchronous_commit": "on"}
        if with_standby:
            settings["synchronous_standby_names"] = STANDBY_NAME
        primary.start(**settings)
        if with_standby:
            # The base backup commits nothing, so it does not wait for the standby it makes.
            self._runner.run(
                "pg_basebackup", "-h", primary.host, "-p", str(primary.port),
                "-U", _SERVER_USER, "-D", str(self.standby.data),
                "-R", "-X", "stream", "-c", "fast", "--no-sync",
            )  # fmt: skip
            self.standby.start(hot_standby="on")
            self.wait_synchronous()
        # Only now: from its first commit on, the primary waits for the standby, and one
        # made before the standby was there would wait forever.
        primary.sql(f"CREATE DATABASE {_DATABASE}", database="postgres")
        if with_standby:
            self.wait_replayed()

    def wait_replayed(self, timeout_s: float = _TIMEOUT_S) -> None:
        """Until the standby has applied every WAL record it holds.

        A synchronous commit is on the standby's disk when it returns, not yet visible
        to a query there: replay follows a moment later. With the primary gone, what the
        standby holds is final, and after this a query on it sees all of it.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            [(received, replayed)] = self.standby.sql(
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()", database="postgres"
            )
            if self.primary.running():
                [(received,)] = self.primary.sql(
                    "SELECT pg_current_wal_flush_lsn()", database="postgres"
                )
            done = self.standby.sql(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn) <= 0",
                (str(received), str(replayed)),
                database="postgres",
            )
            if done == [(True,)]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the standby did not catch up:\n{self.standby.log_text()}")

    def wait_synchronous(self, timeout_s: float = _TIMEOUT_S) -> None:
        """Until the primary counts the standby as its synchronous one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.primary.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
                database="postgres",
            )
            if rows == [("sync",)]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the standby never became synchronous:\n{self.standby.log_text()}")

    def kill_primary(self) -> None:
        """The primary's server dies (``pg_ctl stop -m immediate``: a crash, no checkpoint)."""
        self.primary.kill()

    def promote_standby(self) -> None:
        """The standby becomes the primary, as an operator (or Patroni) would make it."""
        self.standby.promote()

    def wait_ready(self, timeout_s: float = _TIMEOUT_S) -> None:
        """Until the URL reaches a server that takes writes."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """Stop both servers and remove everything; safe to call twice."""
        for cluster in (self.standby, self.primary):
            cluster.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
