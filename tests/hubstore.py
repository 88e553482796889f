"""One vault for the whole test run, and the store opened with it.

Every test that opens a hub database goes through here, so that a file written by one
store (or by a `hub` subprocess) is reopened with the same key. The vault is made once
per process; its key file is written once too, and `tests/conftest.py` points
``$DOORSCAN_HUB_VAULT_KEY`` at it, so the hub's command line, in process or as a child,
opens the same files.

    >>> with open_store(tmp_path / "hub.db") as store:   # doctest: +SKIP
    ...     store.insert_scans(scans, received_at=now)
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from hub.store import HubStore
from hub.store.factory import open_hub_store
from hub.vault import Vault

__all__ = ["TEST_VAULT", "open_store", "vault_key_file"]

TEST_VAULT = Vault.generate()
_key_file: Path | None = None


def open_store(locator: str | Path, *, busy_timeout_ms: int = 10_000) -> HubStore:
    """The store at `locator` (a SQLite path or a PostgreSQL URL, see the `hub_db`
    fixture) with the run's vault."""
    return open_hub_store(str(locator), vault=TEST_VAULT, busy_timeout_ms=busy_timeout_ms)


def vault_key_file() -> Path:
    """The run's vault as a key file (mode 0600), for `--vault-key` and `HubProcess`."""
    global _key_file
    if _key_file is None:
        folder = Path(tempfile.mkdtemp(prefix="doorscan-test-vault-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        TEST_VAULT.save(folder / "hub-vault.key")
        _key_file = folder / "hub-vault.key"
    return _key_file
