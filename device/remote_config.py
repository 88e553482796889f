"""Remote config: the hub's settings for this unit, checked, applied live and kept.

The hub publishes a retained `UnitConfigUpdate` on the unit's config topic
(``python -m hub unit-config UNIT key=value``). The broker hands the latest one to
the unit at every connect, so a unit that boots gets it. `RemoteConfig.receive`
takes the raw payload and:

- ignores a version at or below the one applied (the retained copy comes again at
  every reconnect), and an empty payload (the hub cleared the topic);
- refuses what does not validate (unknown key, bad value, another unit's id): the
  current settings stay, an ERROR is logged once per distinct message, and
  `config_error` (with the version refused) goes into the status;
- otherwise applies it at once through the `apply` callback (debounce window,
  buzzer, frame pacing: no restart) and writes it to the unit's small state, so a
  reboot with no broker in sight comes up with the same settings.

Origin: the broker ACL lets only the hub write ``units/+/config`` and each unit
read only its own (`provisioning.broker_pki.acl_text`), so no signature is checked
here. A setting the message leaves out falls back to the unit's config file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from device.config import UnitConfig
from device.state import StateError, UnitState
from doorscan.errors import Refusal
from doorscan.wire import QUIET_HOURS_TZ, UnitConfigUpdate, decode_message, parse_quiet_hours

__all__ = ["STATE_KEY", "RemoteConfig", "Settings", "in_quiet_hours", "near_quiet_hours_edge"]

log = logging.getLogger(__name__)

STATE_KEY = "remote_config"
"""Where the applied `UnitConfigUpdate` is kept in the unit's state file (as its JSON)."""


@dataclass(frozen=True)
class Settings:
    """What the unit runs with: its config file, overridden by the remote config."""

    debounce_s: float
    feedback_volume: int = 100
    frame_rate: float | None = None  # None: as fast as the frame source gives frames
    quiet_hours: tuple[time, time] | None = None
    # The release the hub wants this unit to run (`hub fleet-update`), kept with the rest;
    # None: whatever is installed. `device.update_agent` acts on it.
    software: str | None = None

    @classmethod
    def of(cls, config: UnitConfig, update: UnitConfigUpdate | None) -> Settings:
        if update is None:
            return cls(debounce_s=config.debounce_s)
        return cls(
            debounce_s=config.debounce_s if update.debounce_s is None else update.debounce_s,
            feedback_volume=100 if update.feedback_volume is None else update.feedback_volume,
            frame_rate=update.frame_rate,
            quiet_hours=parse_quiet_hours(update.quiet_hours) if update.quiet_hours else None,
            software=update.software,
        )

    def sound_allowed(self, now: datetime) -> bool:
        """May the buzzer sound at `now` (volume above 0, outside the quiet hours)?"""
        if self.feedback_volume == 0:
            return False
        return self.quiet_hours is None or not in_quiet_hours(self.quiet_hours, now)


def in_quiet_hours(quiet: tuple[time, time], now: datetime) -> bool:
    """Is `now` (any offset) inside [start, end) Vietnam time? The span may cross midnight."""
    start, end = quiet
    local = now.astimezone(QUIET_HOURS_TZ).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def near_quiet_hours_edge(quiet: tuple[time, time], now: datetime, margin_s: float) -> bool:
    """Is `now` within `margin_s` of the quiet hours' start or end (Vietnam time)?"""
    local = now.astimezone(QUIET_HOURS_TZ)
    seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    for edge in quiet:
        apart = abs(seconds - (edge.hour * 3600 + edge.minute * 60)) % 86400
        if min(apart, 86400 - apart) <= margin_s:
            return True
    return False


class RemoteConfig:
    """The remote config of one unit: `receive()` from the MQTT thread, read from any.

    `apply` is called with the new `Settings` (from the calling thread) and must not
    fail for settings that validated; if it does, the message counts as refused.
    """

    def __init__(
        self,
        base: UnitConfig,
        state: UnitState,
        apply: Callable[[Settings], None],
    ) -> None:
        self.unit_id = base.unit_id
        self._base = base
        self._state = state
        self._apply = apply
        self._lock = threading.Lock()
        self._update: UnitConfigUpdate | None = None
        self._error: str | None = None
        self._refused_version: int | None = None
        self._last_refused: bytes | None = None
        self.settings = Settings.of(base, None)
        self.refused = 0
        self.applied = 0  # received and applied (not counting the restore at start)

    @property
    def version(self) -> int | None:
        """The version applied, None while the unit runs on its config file alone."""
        update = self._update
        return None if update is None else update.version

    def status_fields(self) -> dict[str, Any]:
        """`config_version`, `config_error` and `config_refused_version` for the status.

        The hub's ``unit-config --wait-applied`` reads the two versions: applied, or
        refused (with `config_error` saying why), never the text.
        """
        with self._lock:
            return {
                "config_version": self.version,
                "config_error": self._error,
                "config_refused_version": self._refused_version,
            }

    def restore(self) -> None:
        """Apply the config kept in the state file, if any (at start, before the broker)."""
        stored = self._state.get(STATE_KEY)
        if stored is None:
            return
        try:
            update = decode_message(json.dumps(stored).encode("utf-8"), UnitConfigUpdate)
        except Refusal as exc:
            log.warning("the remote config kept in the state file is unreadable (%s)", exc.reason)
            return
        if update.unit_id != self.unit_id:
            log.warning("the kept remote config is for unit %s; ignored", update.unit_id)
            return
        with self._lock:
            self._set(update)
        log.info("remote config version %d restored from the state file", update.version)

    def receive(self, payload: bytes) -> bool:
        """Handle one message from the config topic; True if the status should go out now."""
        with self._lock:
            if not payload:
                log.info("the hub cleared the config topic; keeping version %s", self.version)
                return False
            version = _raw_version(payload)
            if version is not None and self.version is not None and version <= self.version:
                log.debug(
                    "remote config version %d is not above %d; ignored", version, self.version
                )
                return False
            try:
                update = decode_message(payload, UnitConfigUpdate)
                if update.unit_id != self.unit_id:
                    raise Refusal("wrong_unit", f"unit_id {update.unit_id} is not this unit")
                self._set(update)
            except Refusal as exc:
                return self._refuse(payload, version, exc.reason)
            except Exception as exc:
                log.exception("applying remote config version %s failed", version)
                return self._refuse(payload, version, f"could not be applied: {exc}")
            self._error = None
            self._refused_version = None
            self._last_refused = None
            self.applied += 1
            self._save(update)
        log.info("remote config version %d applied: %s", update.version, update.settings())
        return True

    def _set(self, update: UnitConfigUpdate) -> None:
        settings = Settings.of(self._base, update)
        self._apply(settings)
        self.settings = settings
        self._update = update

    def _save(self, update: UnitConfigUpdate) -> None:
        try:
            self._state.set(
                STATE_KEY, update.model_dump(mode="json", by_alias=True, exclude_none=True)
            )
        except StateError as exc:
            # Applied all the same: the door runs with it, it is only lost at a reboot.
            log.error("remote config version %d applied but not saved: %s", update.version, exc)
            self._error = f"version {update.version} applied but not saved; lost at reboot"

    def _refuse(self, payload: bytes, version: int | None, reason: str) -> bool:
        which = "remote config" if version is None else f"remote config version {version}"
        self._error = f"{which} refused: {reason}"[:300]
        self._refused_version = version
        digest = hashlib.sha256(payload).digest()
        if digest != self._last_refused:
            # Once per message: the retained copy comes back at every reconnect.
            self.refused += 1
            self._last_refused = digest
            log.error("%s; keeping version %s", self._error, self.version)
        return True


def _raw_version(payload: bytes) -> int | None:
    """The message's version if it has a readable one, before any other check."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
