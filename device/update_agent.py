"""The unit's update agent: runs the release the hub asks for, and keeps it only if it works.

The hub names a release in the unit's remote config (``software``, set by
``doorscan-hub fleet-update``). The agent takes it from there, one step at a time, and
records each step in ``update.json`` in the data folder (`device.boot_guard` defines the
record), which is what the status reports (``update_state``):

1. ``downloading``: in a thread of its own, while the door keeps scanning, it fetches the
   release with TUF's checks (`device.updater`) and installs it as a venv beside the
   running one (`device.releases`). A network failure is tried again later; a refusal
   (tampered metadata, no room, a failed install) is ``failed`` with the reason, and the
   same request is not tried again: the hub must ask anew (a new config version).
2. ``staged``: installed, waiting for a quiet moment: no scan for `quiet_s`, and not
   within `QUIET_HOURS_EDGE_S` of the start or end of the quiet hours (the door's
   behaviour changes then; a restart at that minute would be hard to tell apart from it).
3. ``switched``: ``current`` points at the new release and the unit stops its frame
   loop; the process exits with `EXIT_RESTART` and systemd starts the new release. Every
   scan was journaled before its feedback, so the journal the new release opens holds
   them all.
4. The new release, before it scans, runs the self-test without the technician
   (`post_update_checks`) and, once scanning, must have its status acknowledged by the
   broker (a PUBACK) before `confirm_within_s` has passed since the switch. Then
   ``confirmed``. A failed check or the deadline rolls it back (``rolled_back``, with the
   reason) and restarts into the release before; a release that cannot start at all is
   rolled back by the boot guard after `device.boot_guard.MAX_STARTS` starts.

    >>> agent = UpdateAgent.for_config(config)          # doctest: +SKIP
    >>> agent.want("1.6.0", config_version=7)           # from the remote config
    >>> agent.tick(now, last_scan_age_s=120.0)          # from the frame loop: True = restart
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from datetime import time as clock_time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.boot_guard import UpdateRecord, read_record, write_record
from device.config import UnitConfig, UpdatesConfig
from device.releases import InstallFailed, ReleaseSlots
from device.remote_config import near_quiet_hours_edge
from doorscan.errors import ConfigError

if TYPE_CHECKING:  # `device.updater` imports TUF: only a unit that updates pays for it
    from device.updater import ReleaseFetcher

__all__ = [
    "EXIT_RESTART",
    "POST_UPDATE_CHECKS",
    "QUIET_HOURS_EDGE_S",
    "RECORD_NAME",
    "UpdateAgent",
    "running_release",
]

log = logging.getLogger(__name__)

EXIT_RESTART = 75
"""`device run`'s exit status when it stops to be started again (EX_TEMPFAIL): systemd's
``Restart=on-failure`` starts the release ``current`` points at."""

RECORD_NAME = "update.json"
QUIET_HOURS_EDGE_S = 300.0
RETRY_UNAVAILABLE_S = 600.0
"""How long after a network failure the agent tries the download again."""

POST_UPDATE_CHECKS = ("green LED", "red LED", "buzzer", "camera", "broker", "disk")
"""The self-test's checks a new release must pass before it scans. Not the clock: NTP
depends on the network, not on the release, and a door must not roll back for it."""


def running_release(root: Path, prefix: str = sys.prefix) -> str | None:
    """The release this interpreter runs from (``<root>/releases/<version>``), or None."""
    here = Path(prefix).resolve()
    return here.name if here.parent == (root / "releases").resolve() else None


class UpdateAgent:
    """One unit's updates: `want` from the remote config, `tick` from the frame loop.

    `running` is the release this process runs (None: not run from the release slots,
    e.g. a developer's checkout, which is never switched away from).
    """

    def __init__(
        self,
        settings: UpdatesConfig,
        record_path: Path,
        *,
        slots: ReleaseSlots,
        fetcher: ReleaseFetcher,
        running: str | None,
        wall: Callable[[], float] = time.time,
        start_thread: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.record_path = record_path
        self.slots = slots
        self.fetcher = fetcher
        self.running = running
        self._wall = wall
        self._start_thread = start_thread or _daemon_thread
        self._lock = threading.Lock()
        self._record = read_record(record_path)
        self._wanted: tuple[str, int | None] | None = None
        self._working = False
        self._retry_at: float | None = None
        self._given_up: tuple[str, int | None] | None = None
        self.restart_wanted = False

    @classmethod
    def for_config(cls, config: UnitConfig) -> UpdateAgent | None:
        """The agent for a unit whose config has an ``updates`` section, else None."""
        updates = config.updates
        if updates is None:
            return None
        from device.updater import ReleaseFetcher

        state_dir = updates.state_dir or config.data_dir / "updates"
        try:
            trusted_root = updates.trusted_root.read_bytes()
        except OSError as exc:
            raise ConfigError(f"updates.trusted_root: {exc}") from None
        fetcher = ReleaseFetcher(state_dir, updates.repo_url, trusted_root)
        return cls(
            updates,
            config.data_dir / RECORD_NAME,
            slots=ReleaseSlots(updates.root, python=updates.python),
            fetcher=fetcher,
            running=running_release(updates.root),
        )

    # -- what the status says -----------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        """``update_version``, ``update_state`` and ``update_error`` for the unit's status."""
        record = self._record
        if record is None:
            return {}
        return {
            "update_version": record.version,
            "update_state": record.state,
            "update_error": record.error[:300] if record.error else None,
        }

    # -- asked for a release ------------------------------------------------------------

    def want(self, version: str | None, config_version: int | None) -> None:
        """The remote config names `version` (None: none); `tick` acts on it. Any thread."""
        with self._lock:
            self._wanted = (
                None
                if version is None or version == self.running
                else (
                    version,
                    config_version,
                )
            )

    def _fetch_and_install(self) -> None:
        """Download and install the wanted release (in the agent's own thread)."""
        try:
            with self._lock:
                wanted = self._wanted
            if wanted is None:
                return
            version, config_version = wanted
            from device.updater import UpdateRefused, UpdateUnavailable

            self._write(UpdateRecord(version, "downloading", config_version=config_version))
            log.info("release %s: downloading", version)
            try:
                fetched = self.fetcher.fetch(version)
                self.slots.install(fetched)
            except UpdateUnavailable as exc:
                log.warning(
                    "release %s: cannot download now (%s); trying again later", version, exc
                )
                self._write(
                    UpdateRecord(
                        version, "downloading", config_version=config_version, error=str(exc)
                    )
                )
                with self._lock:
                    self._retry_at = self._wall() + RETRY_UNAVAILABLE_S
                return
            except (UpdateRefused, InstallFailed) as exc:
                log.error("release %s: %s", version, exc)
                self._write(
                    UpdateRecord(version, "failed", config_version=config_version, error=str(exc))
                )
                return
            self._write(UpdateRecord(version, "staged", config_version=config_version))
            log.info(
                "release %s: installed beside %s; switching at a quiet moment",
                version,
                self.running,
            )
        except Exception:
            log.exception("the update failed unexpectedly; the running release stays")
        finally:
            with self._lock:
                self._working = False

    # -- from the frame loop ------------------------------------------------------------

    def tick(
        self,
        now: datetime,
        *,
        last_scan_age_s: float,
        quiet_hours: tuple[clock_time, clock_time] | None = None,
        status_acked: bool = False,
    ) -> bool:
        """Move the update on; True when the unit should stop now to be restarted."""
        record = self._record
        if self.awaiting_confirmation():
            assert record is not None
            if status_acked:
                self.confirm()
            elif record.deadline is not None and self._wall() > record.deadline:
                self.roll_back(
                    f"no acknowledgement from the broker within "
                    f"{self.settings.confirm_within_s:.0f} s of the switch"
                )
                return True
            return False
        with self._lock:
            wanted, retry_at, working = self._wanted, self._retry_at, self._working
        if wanted is None or working:
            return False
        version, config_version = wanted
        if record is not None and record.version == version:
            if (
                record.state in ("failed", "rolled_back")
                and record.config_version == config_version
            ):
                if self._given_up != wanted:
                    self._given_up = wanted
                    log.warning(
                        "release %s was %s (%s); not tried again until the hub asks anew",
                        version,
                        record.state.replace("_", " "),
                        record.error,
                    )
                return False
            if record.state in ("staged", "switched"):  # switched: cut short before the link
                if last_scan_age_s < self.settings.quiet_s:
                    return False
                if quiet_hours is not None and near_quiet_hours_edge(
                    quiet_hours, now, QUIET_HOURS_EDGE_S
                ):
                    return False
                return self._switch(record)
            if record.state == "downloading" and retry_at is not None and self._wall() < retry_at:
                return False
        with self._lock:
            self._retry_at, self._working = None, True
        self._start_thread(self._fetch_and_install)
        return False

    def _switch(self, record: UpdateRecord) -> bool:
        if record.version not in self.slots.installed():  # removed since: install it again
            self._write(replace(record, state="downloading", error="not installed any more"))
            return False
        # The record first: cut short before the link moves, the old release finds it
        # "switched" (not to itself) and switches again; the boot guard leaves it alone.
        self._write(
            replace(
                record,
                state="switched",
                previous=self.running,
                starts=0,
                deadline=self._wall() + self.settings.confirm_within_s,
                error=None,
            )
        )
        self.slots.switch(record.version)
        log.warning(
            "release %s: switched from %s; restarting into it", record.version, self.running
        )
        self.restart_wanted = True
        return True

    # -- in the new release -------------------------------------------------------------

    def awaiting_confirmation(self) -> bool:
        """This process is a release that was switched to and has not confirmed itself."""
        record = self._record
        return (
            record is not None
            and record.state == "switched"
            and self.running is not None
            and record.version == self.running
        )

    def confirm(self) -> None:
        record = self._record
        assert record is not None
        self._write(replace(record, state="confirmed", error=None))
        log.info(
            "release %s: confirmed (self-test passed, the broker acknowledged)", record.version
        )

    def roll_back(self, reason: str) -> None:
        """Back to the release before this one; the caller stops for the restart."""
        record = self._record
        assert record is not None
        try:
            before = self.slots.roll_back()
        except InstallFailed as exc:
            log.error("release %s: %s, and cannot roll back: %s", record.version, reason, exc)
            self._write(replace(record, error=f"{reason}; cannot roll back: {exc}"))
            return
        self._write(replace(record, state="rolled_back", error=reason))
        log.error("release %s: %s; rolled back to %s", record.version, reason, before)
        self.restart_wanted = True

    def _write(self, record: UpdateRecord) -> None:
        write_record(self.record_path, record)
        self._record = record


def _daemon_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, name="doorscan-update", daemon=True)
    thread.start()
    return thread
