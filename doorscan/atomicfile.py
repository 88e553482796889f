"""Replacing a small file so that a power cut leaves the old one or the new one, whole.

Door units lose power without warning and the technician's laptop can too, so every
file doorscan writes outside a database goes through `write_atomic`: a temporary
file in the same folder (created with its final mode, so a private key is never
readable by others, not even for a moment), fsync, ``os.replace``, fsync of the
folder (the rename is only durable once the folder's entry is on disk).

    >>> write_atomic(folder / "unit-key.pem", key_pem, mode=0o600)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]

log = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries durable.

    Some file systems (FAT on a boot partition) cannot sync a folder: a warning, not an
    error, because the file itself is already written and synced.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        log.warning("cannot open %s to sync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("cannot sync the folder %s: %s", folder, exc)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`; readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL and O_NOFOLLOW: never write through a link someone left in the folder.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)  # undo a permissive or restrictive umask
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
