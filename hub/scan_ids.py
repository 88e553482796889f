"""The scan id of a check-in imported from a CSV file, shared by the importer and the store.

An imported row has no scan id of its own, so one is made from what identifies the
check-in: the venue, the time and the person. The same row always gets the same id,
so importing a file twice adds nothing. The person enters by pseudonym
(`hub.vault.Vault.blind`), never by person key: scan ids are stored in the clear, and
an unkeyed hash of a 12-digit CCCD number is undone by trying every number.
"""

from __future__ import annotations

import hashlib

__all__ = ["csv_scan_id"]


def csv_scan_id(venue_id: str, scanned_at_ms: int, pseudonym: str) -> str:
    """The scan id of an imported row; `pseudonym` is the vault's blinding of the person key."""
    digest = hashlib.sha256(f"{venue_id}\x1f{scanned_at_ms}\x1f{pseudonym}".encode()).hexdigest()
    return "csv-" + digest[:32]
