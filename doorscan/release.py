"""What a release of the unit software is, as provisioning signs it and a unit reads it.

A release is a set of files published as The Update Framework's *targets* under
``releases/<version>/`` (`target_path`), listed with their SHA-256 and length in a
manifest (`ReleaseManifest`, the target ``releases/<version>/manifest.json``). TUF's
metadata, signed by provisioning's keys, vouches for every one of those bytes; the
manifest says which files make the release and what each is for, so a unit fetches
the manifest first and then exactly the files it names.

    >>> target_path("1.4.0", MANIFEST_NAME)
    'releases/1.4.0/manifest.json'

Shared by `provisioning.release_repo` (which writes it) and `device.updater` (which
reads it): one definition of the layout, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from doorscan.errors import Refusal

__all__ = [
    "MANIFEST_NAME",
    "VERSION_PATTERN",
    "ReleaseFile",
    "ReleaseManifest",
    "check_version",
    "target_path",
]

MANIFEST_NAME = "manifest.json"
VERSION_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+(?:[a-z]+[0-9]+)?$"
"""``1.4.0``, ``1.5.0rc1``: PEP 440 release numbers, no local part, so a version is a
safe folder name on the unit (``/opt/doorscan/releases/<version>``)."""

_VERSION = re.compile(VERSION_PATTERN)
_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$"  # a plain file name: no folder, no ".."


def check_version(version: str) -> str:
    """`version` if it is a release number (`VERSION_PATTERN`), else `Refusal`."""
    if not _VERSION.fullmatch(version):
        raise Refusal("bad_version", f"{version[:40]!r} is not a release number such as 1.4.0")
    return version


def target_path(version: str, name: str) -> str:
    """The TUF target path of file `name` of release `version`."""
    return f"releases/{check_version(version)}/{name}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseFile(_Strict):
    """One file of a release, as TUF's targets metadata lists it too."""

    name: str = Field(pattern=_FILE_NAME)
    kind: Literal["wheel", "service"] = Field(
        description="wheel: installed into the release's own venv; service: a systemd unit file"
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    length: int = Field(ge=0)


class ReleaseManifest(_Strict):
    """The files that make release `version`; a unit installs exactly these."""

    version: str = Field(pattern=VERSION_PATTERN)
    built_at: AwareDatetime
    files: list[ReleaseFile] = Field(min_length=1)

    def total_bytes(self) -> int:
        """What the release's files take to download (checked against free space first)."""
        return sum(f.length for f in self.files)

    @classmethod
    def made(cls, version: str, built_at: datetime, files: list[ReleaseFile]) -> ReleaseManifest:
        names = [f.name for f in files]
        if MANIFEST_NAME in names or len(set(names)) != len(names):
            raise Refusal("bad_release", f"a release's files need distinct names, not {names}")
        if not any(f.kind == "wheel" for f in files):
            raise Refusal("bad_release", "a release needs at least one wheel")
        return cls(version=version, built_at=built_at, files=files)
