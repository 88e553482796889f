"""The boot guard: rolls a unit back to its previous release when a new one does not start.

A unit that switched to a new release (`device.update_agent`) restarts into it and must
confirm it: its self-test passes and the broker acknowledges its status. A release that
cannot even run its own code cannot roll itself back, so this guard does, from outside
every release: systemd runs it before each start of the service
(``ExecStartPre=-/usr/bin/python3 /opt/doorscan/boot-guard.py``), with the system's
Python and nothing else. It reads the update record the agent keeps
(``/var/lib/doorscan/update.json``) and, while a switch is unconfirmed, counts the
starts; on the start after `MAX_STARTS` failed ones (a crash loop, or the watchdog
killing a hung release), or once the deadline to confirm has passed, it points
``current`` back at ``previous`` and records ``rolled_back`` with the reason.

This file imports nothing but the standard library, so that it runs whatever the state
of the releases; the install script copies it next to them. The record format and the
link changes are defined here once, and `device.releases` and `device.update_agent` use
them from here.

    python3 boot-guard.py --root /opt/doorscan --record /var/lib/doorscan/update.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

__all__ = [
    "MAX_STARTS",
    "UpdateRecord",
    "guard",
    "link_release",
    "linked_release",
    "read_record",
    "write_record",
]

MAX_STARTS = 3
"""Starts a switched release gets to confirm itself before the guard rolls it back."""

STATES = ("downloading", "staged", "switched", "confirmed", "rolled_back", "failed")


@dataclass(frozen=True)
class UpdateRecord:
    """Where the unit's last update stands (`doorscan.wire.UpdateState` for `state`)."""

    version: str  # the release the update is about
    state: str
    previous: str | None = None  # the release that ran before the switch
    config_version: int | None = None  # the remote config that asked for it
    error: str | None = None  # why it failed or was rolled back
    starts: int = 0  # starts of `version` since the switch, counted by the guard
    deadline: float | None = None  # Unix time by which a switch must be confirmed


def read_record(path: Path) -> UpdateRecord | None:
    """The record at `path`, or None if there is none (or it cannot be read: no update)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(UpdateRecord)}
        record = UpdateRecord(**{k: v for k, v in data.items() if k in names})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        print(f"boot-guard: {path} is unreadable ({exc}); taken as no update", file=sys.stderr)
        return None
    return record if record.state in STATES else None


def write_record(path: Path, record: UpdateRecord) -> None:
    """Write `record` so that a power cut leaves the old one or the new one, whole."""
    if record.state not in STATES:
        raise ValueError(f"unknown update state {record.state!r}")
    fresh = path.with_name(f".{path.name}.new")
    with fresh.open("w", encoding="utf-8") as out:
        json.dump(asdict(record), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    fresh.replace(path)
    _fsync_dir(path.parent)


def linked_release(root: Path, name: str) -> str | None:
    """The release the link ``root/name`` (``current``, ``previous``) points at."""
    try:
        return (root / name).readlink().name
    except (FileNotFoundError, OSError):
        return None


def link_release(root: Path, name: str, version: str) -> None:
    """Point ``root/name`` at ``releases/<version>`` by renaming a new link over it (atomic)."""
    fresh = root / f".{name}.new"
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(Path("releases") / version)
    fresh.replace(root / name)
    _fsync_dir(root)


def guard(root: Path, record_path: Path, *, now: float, max_starts: int = MAX_STARTS) -> str | None:
    """Count this start of an unconfirmed switch, rolling back when it is out of chances.

    What it did, as a line for the journal, or None when there was nothing to do.
    """
    record = read_record(record_path)
    if record is None or record.state != "switched":
        return None
    if linked_release(root, "current") != record.version:
        return None  # someone (a technician) moved the link since: theirs to decide
    starts = record.starts + 1
    why = None
    if record.deadline is not None and now > record.deadline:
        why = "it did not confirm itself before its deadline"
    elif starts > max_starts:
        why = f"it failed to confirm itself in {max_starts} starts"
    if why is None:
        write_record(record_path, replace(record, starts=starts))
        return f"release {record.version}: start {starts} of {max_starts} to confirm itself"
    before = record.previous
    if before is None or not (root / "releases" / before).is_dir():
        write_record(record_path, replace(record, starts=starts, error=why))
        return f"release {record.version}: {why}, and there is no previous release to go back to"
    link_release(root, "current", before)
    link_release(root, "previous", record.version)
    write_record(
        record_path, replace(record, state="rolled_back", starts=starts, error=f"boot guard: {why}")
    )
    return f"release {record.version}: {why}; rolled back to {before}"


def _fsync_dir(folder: Path) -> None:
    # doorscan.atomicfile's twin: this file is copied alone and must not import doorscan.
    # The rename is durable only once the folder's entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="boot-guard", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/opt/doorscan"))
    parser.add_argument("--record", type=Path, default=Path("/var/lib/doorscan/update.json"))
    parser.add_argument("--max-starts", type=int, default=MAX_STARTS)
    args = parser.parse_args(argv)
    try:
        said = guard(args.root, args.record, now=time.time(), max_starts=args.max_starts)
    except OSError as exc:
        # ExecStartPre=- starts the unit anyway: a guard that cannot write must not
        # keep the door shut.
        print(f"boot-guard: {exc}", file=sys.stderr)
        return 1
    if said:
        print(f"boot-guard: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
