"""The unit's small state: counters, the applied config version, the last ack time.

These are a few TinyDB documents in one JSON file next to the journal. Unlike the
journal they can be rebuilt (counters restart, the config is applied again), so
the rules are different:

- Writes are atomic (`AtomicJSONStorage`): a temp file in the same folder, fsync,
  ``os.replace``, fsync of the folder. A power cut leaves the old file or the new
  one, never half of one; TinyDB's own JSONStorage rewrites the file in place and
  can leave truncated JSON.
- A missing or unreadable file starts an empty state with a warning instead of
  stopping the door.
- Counters live in memory and reach the disk on `flush()` and `close()`: the scan
  hot path never rewrites a JSON file. A power cut loses the counts since the last
  flush, so the unit should flush now and then (every minute is plenty).

    >>> with UnitState(data_dir / "state.json") as state:       # doctest: +SKIP
    ...     state.increment("accepted")
    ...     state.set("config_version", 7)                      # written at once
    ...     state.counters()["accepted"]
    1
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from doorscan.atomicfile import write_atomic
from doorscan.errors import DoorscanError
from doorscan.lifecycle import Closeable

__all__ = ["COUNTER_NAMES", "StateError", "AtomicJSONStorage", "UnitState"]

log = logging.getLogger(__name__)

# The names match `Feedback.<NAME>.name.lower()`, which is what the scanner counts.
COUNTER_NAMES = ("accepted", "already_in", "refused", "recorded_offline", "fault")

_COUNTERS_TABLE = "counters"
_VALUES_TABLE = "values"


class StateError(DoorscanError, OSError):
    """The state file could not be written, or the state is closed."""


class AtomicJSONStorage(Storage):
    """A TinyDB storage that replaces its JSON file atomically on every write.

    Reads come from memory after the first one: this storage is the file's only
    writer. A file that is missing, empty or not a JSON object reads as empty and is
    logged; the next write replaces it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] | None = self._load()

    def _load(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read state file %s (%s); starting with empty state", self.path, exc)
            return None
        if not raw:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            log.warning("state file %s is corrupt (%s); starting with empty state", self.path, exc)
            return None
        if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
            log.warning("state file %s is not TinyDB data; starting with empty state", self.path)
            return None
        return data

    def read(self) -> dict[str, dict[str, Any]] | None:
        # TinyDB edits what it reads in place before writing it back; hand out a copy so
        # a failed write cannot leave memory ahead of the file.
        return copy.deepcopy(self._data)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        payload = json.dumps(data, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
        _atomic_write(self.path, payload)
        self._data = copy.deepcopy(data)

    def close(self) -> None:
        pass  # no file stays open between writes


def _atomic_write(path: Path, payload: bytes) -> None:
    try:
        write_atomic(path, payload, mode=0o600)
    except OSError as exc:
        raise StateError(f"could not write the state file {path}: {exc}") from exc


class UnitState(Closeable):
    """Counters and a few named values of one unit, kept in a TinyDB file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: TinyDB | None = TinyDB(self.path, storage=AtomicJSONStorage)
        stored = self._db.table(_COUNTERS_TABLE).get(doc_id=1)
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        if stored is not None:
            for name in COUNTER_NAMES:
                value = stored.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self._counters[name] = value
        self._dirty = False

    def increment(self, name: str, by: int = 1) -> None:
        """Add `by` to a counter, in memory only (see `flush()`)."""
        if name not in self._counters:
            raise ValueError(f"unknown counter {name!r}; counters are {', '.join(COUNTER_NAMES)}")
        if by < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._check_open()
            self._counters[name] += by
            self._dirty = True

    def counters(self) -> dict[str, int]:
        """A copy of every counter, the ones not yet flushed included."""
        with self._lock:
            return dict(self._counters)

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        with self._lock:
            db = self._check_open()
            doc = db.table(_VALUES_TABLE).get(Query().key == key)
        return default if doc is None else doc["value"]

    def set(self, key: str, value: Any) -> None:
        """Store a JSON value under `key` and write the file before returning.

        Times go in as RFC 3339 text (`doorscan.timefmt.format_rfc3339`).
        """
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"state value for {key!r} is not JSON: {exc}") from None
        with self._lock:
            table = self._check_open().table(_VALUES_TABLE)
            # Not TinyDB's upsert(): it writes the file twice when the key is new.
            existing = table.get(Query().key == key)
            if isinstance(existing, Document):
                table.update({"value": value}, doc_ids=[existing.doc_id])
            else:
                table.insert({"key": key, "value": value})

    def flush(self) -> None:
        """Write the counters to the file if they changed since the last write."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Flush and close; idempotent. A failed final write is logged, not raised."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._flush_locked()
            except StateError as exc:
                log.error("counters not saved on close: %s", exc)
            db, self._db = self._db, None
            db.close()

    def _flush_locked(self) -> None:
        db = self._check_open()
        if not self._dirty:
            return
        table = db.table(_COUNTERS_TABLE)
        snapshot = dict(self._counters)
        # One file write either way (TinyDB's upsert() writes twice for a new document).
        if table.contains(doc_id=1):
            table.update(snapshot, doc_ids=[1])
        else:
            table.insert(Document(snapshot, doc_id=1))
        self._dirty = False

    def _check_open(self) -> TinyDB:
        if self._db is None:
            raise StateError(f"the unit state {self.path} is closed")
        return self._db
