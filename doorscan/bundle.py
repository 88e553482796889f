"""The offline config bundle: a unit's whole configuration on the SD card's boot partition.

For bulk work without a network at hand, a technician writes each card's bundle with
`python -m provisioning bundle` onto the boot partition (FAT, readable from any laptop)
and the unit takes it in at boot with `python -m device import-bundle`. The bundle is
one folder, `doorscan-bundle/`, holding the unit config, every file it names, and
`bundle.json`, the manifest defined here, which both sides share:

    {"format": "doorscan-bundle/1", "unit_id": "bv-gia-lai-door-1",
     "config": "bv-gia-lai-door-1.json", "created_at": "2026-11-26T10:00:00Z",
     "files": {"bv-gia-lai-door-1.json": "<sha-256 hex>", "ca.pem": "...", ...}}

The digests let the unit refuse a bundle that was half copied or edited by hand; they
are not a signature (whoever can write the SD card owns the unit anyway). The private
key travels in the bundle, unlike field enrollment, where it is made on the unit: the
unit deletes the bundle once imported, and `docs/security.md` says what that costs.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BUNDLE_DIR", "FORMAT", "MANIFEST", "BundleManifest", "file_digest"]

BUNDLE_DIR = "doorscan-bundle"
MANIFEST = "bundle.json"
FORMAT = "doorscan-bundle/1"

# A bundle names plain files side by side: no folders, no "..", nothing hidden.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = Field(pattern=f"^{re.escape(FORMAT)}$")
    unit_id: str
    config: str
    created_at: datetime
    files: dict[str, str] = Field(description="file name -> SHA-256 hex of its bytes")

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _FILE_NAME.fullmatch(name) or name == MANIFEST:
                raise ValueError(f"{name!r} is not a plain file name a bundle may hold")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{name}: {digest!r} is not a SHA-256 hex digest")
        return files

    @model_validator(mode="after")
    def _config_is_listed(self) -> BundleManifest:
        if self.config not in self.files:
            raise ValueError(f"the config {self.config!r} is not among the bundle's files")
        return self


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
