"""Fetching a release of the unit software that the fleet's keys signed.

The unit reads the fleet's update repository (`provisioning.release_repo`) with The
Update Framework's client (python-tuf's ``ngclient``). Every byte it keeps has passed
TUF's checks against the root of trust it was installed with (``1.root.json``):

- **rollback**: metadata older than what the unit has already seen is refused;
- **freeze**: expired metadata is refused (provisioning re-signs the timestamp daily);
- **mix-and-match**: a snapshot and targets metadata that do not belong together are
  refused, as is metadata signed by a key the root does not name;
- **arbitrary package**: a file whose SHA-256 or length differs from the signed
  targets metadata is refused, and one the metadata does not list is never fetched.

A refusal is `UpdateRefused` (the repository or a mirror is lying: keep running the
current version and report it); a network failure is `UpdateUnavailable` (try later).
Because the metadata is signed, plain HTTP is as safe as HTTPS for the bytes; HTTPS
only hides which version a unit fetches.

    >>> fetcher = ReleaseFetcher(state_dir, "http://hub.local:8080/releases",   # doctest: +SKIP
    ...                          trusted_root=Path("/etc/doorscan/1.root.json").read_bytes())
    >>> fetched = fetcher.fetch("1.4.0")                                         # doctest: +SKIP
    >>> fetched.files["doorscan-1.4.0-py3-none-any.whl"]                         # doctest: +SKIP

The free space is checked against the manifest's total before any release file is
downloaded; what a fetch leaves behind is only ever whole, verified files (TUF writes a
download to a temporary file and renames it once its hash matched).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from doorscan.errors import DoorscanError
from doorscan.release import MANIFEST_NAME, ReleaseManifest, check_version, target_path

__all__ = [
    "FetchedRelease",
    "ReleaseFetcher",
    "SPARE_BYTES",
    "UpdateRefused",
    "UpdateUnavailable",
]

SPARE_BYTES = 64 * 1024 * 1024
"""Left free after a download: the journal and the logs must still have room."""


class UpdateRefused(DoorscanError):
    """The release cannot be taken: a check failed, it does not exist, or no room."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class UpdateUnavailable(DoorscanError):
    """The repository could not be reached or read completely; try again later."""


@dataclass(frozen=True)
class FetchedRelease:
    manifest: ReleaseManifest
    files: dict[str, Path]  # file name -> verified local copy


class ReleaseFetcher:
    """One unit's view of the update repository at `repo_url` (``metadata/``, ``targets/``).

    `state_dir` keeps the metadata seen so far (``tuf/``, which is what makes a
    rollback detectable) and the downloads (``downloads/<version>/``). `fetcher` is
    TUF's download interface: None for its own (urllib3, the system's CA store).
    """

    def __init__(
        self,
        state_dir: Path,
        repo_url: str,
        trusted_root: bytes,
        *,
        fetcher: FetcherInterface | None = None,
        free_bytes: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self.state_dir = state_dir
        self.repo_url = repo_url.rstrip("/")
        self._trusted_root = trusted_root
        self._fetcher = fetcher
        self._free_bytes = free_bytes

    def fetch(self, version: str) -> FetchedRelease:
        """Release `version`'s manifest and files, each verified; see the module docstring."""
        check_version(version)
        downloads = self.state_dir / "downloads" / version
        downloads.mkdir(parents=True, exist_ok=True)
        # A new client per check: TUF's refresh runs once per Updater.
        updater = self._updater(downloads)
        try:
            updater.refresh()
            manifest = self._manifest(updater, version, downloads / MANIFEST_NAME)
            needed = manifest.total_bytes() + SPARE_BYTES
            free = self._free_bytes(downloads)
            if free < needed:
                raise UpdateRefused(
                    "no_room",
                    f"release {version} needs {needed:,} bytes free, {free:,} are",
                )
            files: dict[str, Path] = {}
            for listed in manifest.files:
                info = updater.get_targetinfo(target_path(version, listed.name))
                if info is None or (info.length, info.hashes.get("sha256")) != (
                    listed.length,
                    listed.sha256,
                ):
                    raise UpdateRefused(
                        "manifest_mismatch",
                        f"{listed.name} of release {version} is not signed as its manifest says",
                    )
                local = downloads / listed.name
                cached = updater.find_cached_target(info, str(local))
                files[listed.name] = Path(cached or updater.download_target(info, str(local)))
        except RepositoryError as exc:
            raise UpdateRefused("repository_refused", f"{type(exc).__name__}: {exc}") from exc
        except DownloadError as exc:
            raise UpdateUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return FetchedRelease(manifest, files)

    def _updater(self, downloads: Path) -> Updater:
        metadata = self.state_dir / "tuf"
        metadata.mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(metadata),
            metadata_base_url=f"{self.repo_url}/metadata/",
            target_dir=str(downloads),
            target_base_url=f"{self.repo_url}/targets/",
            fetcher=self._fetcher,
            config=UpdaterConfig(app_user_agent="doorscan-unit"),
            bootstrap=self._trusted_root,
        )

    def _manifest(self, updater: Updater, version: str, local: Path) -> ReleaseManifest:
        info = updater.get_targetinfo(target_path(version, MANIFEST_NAME))
        if info is None:
            raise UpdateRefused("no_such_release", f"the repository signs no release {version}")
        path = updater.find_cached_target(info, str(local)) or updater.download_target(
            info, str(local)
        )
        try:
            manifest = ReleaseManifest.model_validate_json(Path(path).read_bytes())
        except ValidationError as exc:
            raise UpdateRefused("bad_manifest", f"release {version}: {exc}") from None
        if manifest.version != version:
            raise UpdateRefused(
                "bad_manifest", f"the manifest of {version} says it is {manifest.version}"
            )
        return manifest
