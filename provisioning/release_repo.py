"""The fleet's update repository: The Update Framework's signed metadata over releases.

Provisioning holds the keys and writes a folder that any static HTTPS server can serve
(the hub's web server, nginx, a bucket); door units read it with TUF's client
(`device.updater`). The folder, ``releases/`` in the fleet home::

    metadata/1.root.json, 2.root.json ...   root, every version kept (units walk them)
    metadata/timestamp.json                 the one file that changes in place
    metadata/<n>.snapshot.json               which targets metadata is current
    metadata/<n>.targets.json                every release file's SHA-256 and length
    targets/releases/<version>/<sha256>.<name>

Consistent snapshots (versioned metadata, hash-prefixed files): nothing but
``timestamp.json`` is ever rewritten, so a unit downloading while a release is published
never sees half of the old set and half of the new, and a cache may keep every other file
for ever. Publish order follows from it: files, targets, snapshot, timestamp last.

The keys, one Ed25519 key per role, each role's threshold 1:

- ``release-root-key/root.pem``: the root of trust, needed only to create the repository
  and to change keys. After ``release init`` it belongs on removable media in a safe, not
  on the technician's laptop (docs/field-guide.md, the key ceremony).
- ``release-keys/{targets,snapshot,timestamp}.pem``: online keys, mode 0600, used by
  ``release build`` and ``release stamp``.

Lifetimes (`LIFETIMES`): root a year, targets 90 days, snapshot 7 days, timestamp a day.
A unit refuses expired metadata, which is what defeats a mirror that freezes the fleet
on old releases; so ``release stamp`` must run at least daily (a systemd timer or cron),
even when nothing was released.

    >>> repo = ReleaseRepo.create(folder, keys_dir, root_key_dir, now)      # doctest: +SKIP
    >>> repo.add_release("1.4.0", [(wheel, "wheel")], now)                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from doorscan.atomicfile import write_atomic
from doorscan.errors import DoorscanError
from doorscan.release import MANIFEST_NAME, ReleaseFile, ReleaseManifest, check_version, target_path

__all__ = [
    "LIFETIMES",
    "ONLINE_ROLES",
    "ReleaseRepo",
    "ReleaseRepoError",
    "generate_keys",
]

Role = Literal["root", "targets", "snapshot", "timestamp"]
ONLINE_ROLES: tuple[Role, ...] = ("targets", "snapshot", "timestamp")
LIFETIMES: dict[Role, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
_VERSIONED_ROOT = re.compile(r"^([0-9]+)\.root\.json$")


class ReleaseRepoError(DoorscanError):
    """The repository or its keys are missing, or not what this command needs."""


def generate_keys(keys_dir: Path, root_key_dir: Path) -> None:
    """A new Ed25519 key for each role; `ReleaseRepoError` if one is there already."""
    paths = [root_key_dir / "root.pem", *(keys_dir / f"{r}.pem" for r in ONLINE_ROLES)]
    present = [str(p) for p in paths if p.exists()]
    if present:
        raise ReleaseRepoError(f"release keys already exist: {', '.join(present)}")
    for path in paths:
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, pem, mode=0o600)


def _signer(path: Path) -> CryptoSigner:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ReleaseRepoError(f"no release key at {path}") from None
    except ValueError as exc:
        raise ReleaseRepoError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseRepoError(f"{path} is not an Ed25519 key")
    return CryptoSigner(key)


class ReleaseRepo:
    """The repository in `folder`, signed with the online keys in `keys_dir`."""

    def __init__(self, folder: Path, keys_dir: Path) -> None:
        self.folder = folder
        self.keys_dir = keys_dir
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self._md: dict[str, Metadata[Any]] = {}
        self._load()

    # -- creating and opening ---------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, keys_dir: Path, root_key_dir: Path, now: datetime) -> ReleaseRepo:
        """Version 1 of every role, signed; the keys must exist (`generate_keys`)."""
        if (folder / "metadata" / "1.root.json").exists():
            raise ReleaseRepoError(f"{folder} already holds a release repository")
        signers = {r: _signer(keys_dir / f"{r}.pem") for r in ONLINE_ROLES}
        root_signer = _signer(root_key_dir / "root.pem")
        root = Root(expires=now + LIFETIMES["root"], consistent_snapshot=True)
        root.add_key(root_signer.public_key, "root")
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        first: dict[Role, Metadata[Any]] = {
            "root": Metadata(root),
            "targets": Metadata(Targets(expires=now + LIFETIMES["targets"])),
            "snapshot": Metadata(Snapshot(expires=now + LIFETIMES["snapshot"])),
            "timestamp": Metadata(Timestamp(expires=now + LIFETIMES["timestamp"])),
        }
        first["root"].sign(root_signer)
        for role in ONLINE_ROLES:
            first[role].sign(signers[role])
        for role in ("root", "targets", "snapshot", "timestamp"):  # timestamp last
            _write(folder / "metadata", first[role], role)
        (folder / "targets").mkdir(parents=True, exist_ok=True)
        return cls(folder, keys_dir)

    def _load(self) -> None:
        """The current metadata: the newest root, the timestamp and what it points to."""
        roots = [
            int(m.group(1))
            for p in self.metadata_dir.glob("*.root.json")
            if (m := _VERSIONED_ROOT.match(p.name))
        ]
        if not roots:
            raise ReleaseRepoError(
                f"no release repository at {self.folder}: run `release init` first"
            )
        self._md["root"] = _read(self.metadata_dir / f"{max(roots)}.root.json")
        self._md["timestamp"] = _read(self.metadata_dir / "timestamp.json")
        snapshot = self._md["timestamp"].signed.snapshot_meta.version
        self._md["snapshot"] = _read(self.metadata_dir / f"{snapshot}.snapshot.json")
        targets = self._md["snapshot"].signed.meta["targets.json"].version
        self._md["targets"] = _read(self.metadata_dir / f"{targets}.targets.json")

    # -- what is in it ------------------------------------------------------------------

    def releases(self) -> list[str]:
        """The versions published, oldest first by publication."""
        found = []
        for path in self._md["targets"].signed.targets:
            parts = path.split("/")
            if len(parts) == 3 and parts[0] == "releases" and parts[2] == MANIFEST_NAME:
                found.append(parts[1])
        return found

    def trusted_root(self) -> bytes:
        """``1.root.json``: what a unit is installed with and trusts from then on."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    # -- publishing -----------------------------------------------------------------------

    def add_release(
        self,
        version: str,
        files: list[tuple[Path, Literal["wheel", "service"]]],
        now: datetime,
    ) -> ReleaseManifest:
        """Publish `files` as release `version`: manifest, targets, snapshot, timestamp.

        A version is published once: its files never change (a unit that fetched half
        of it must find the same other half).
        """
        check_version(version)
        if version in self.releases():
            raise ReleaseRepoError(f"release {version} is already published; give a new version")
        listed = [
            ReleaseFile(name=path.name, kind=kind, sha256=_sha256(path), length=path.stat().st_size)
            for path, kind in files
        ]
        manifest = ReleaseManifest.made(version, now, listed)
        targets: Targets = self._md["targets"].signed
        for path, _ in files:
            self._add_target(targets, target_path(version, path.name), path.read_bytes())
        body = manifest.model_dump_json(indent=2).encode("utf-8") + b"\n"
        self._add_target(targets, target_path(version, MANIFEST_NAME), body)
        targets.version += 1
        targets.expires = now + LIFETIMES["targets"]
        self._sign_and_write("targets")
        snapshot: Snapshot = self._md["snapshot"].signed
        snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        snapshot.version += 1
        snapshot.expires = now + LIFETIMES["snapshot"]
        self._sign_and_write("snapshot")
        self.stamp(now)
        return manifest

    def stamp(self, now: datetime, lifetime: timedelta = LIFETIMES["timestamp"]) -> datetime:
        """Sign a new timestamp for the current snapshot; its expiry is returned.

        Run daily at least (units refuse an expired timestamp). Snapshot and targets
        are signed again first when they would expire before the new timestamp.
        """
        targets: Targets = self._md["targets"].signed
        snapshot: Snapshot = self._md["snapshot"].signed
        stale_targets = targets.expires < now + lifetime
        if stale_targets:
            targets.version += 1
            targets.expires = now + LIFETIMES["targets"]
            self._sign_and_write("targets")
            snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        if stale_targets or snapshot.expires < now + lifetime:
            snapshot.version += 1
            snapshot.expires = now + LIFETIMES["snapshot"]
            self._sign_and_write("snapshot")
        timestamp: Timestamp = self._md["timestamp"].signed
        timestamp.snapshot_meta = MetaFile(version=self._md["snapshot"].signed.version)
        timestamp.version += 1
        timestamp.expires = now + lifetime
        self._sign_and_write("timestamp")
        return timestamp.expires

    def _add_target(self, targets: Targets, path: str, body: bytes) -> None:
        target = TargetFile.from_data(path, body, ["sha256"])
        for stored in target.get_prefixed_paths():
            (self.targets_dir / stored).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.targets_dir / stored, body, mode=0o644)
        targets.targets[path] = target

    def _sign_and_write(self, role: str) -> None:
        metadata = self._md[role]
        metadata.sign(_signer(self.keys_dir / f"{role}.pem"))
        _write(self.metadata_dir, metadata, role)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path) -> Metadata[Any]:
    try:
        return Metadata.from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise ReleaseRepoError(f"the release repository lacks {path}") from None


def _write(folder: Path, metadata: Metadata[Any], role: str) -> None:
    """Write `metadata` under the name a consistent-snapshot client asks for."""
    name = "timestamp.json" if role == "timestamp" else f"{metadata.signed.version}.{role}.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / name, metadata.to_bytes(JSONSerializer(compact=False)), mode=0o644)
