"""The releases installed on a unit, side by side, and which one runs.

    /opt/doorscan/releases/1.4.0/     a venv with release 1.4.0's wheels installed
    /opt/doorscan/releases/1.5.0/     the next one, installed beside it
    /opt/doorscan/current  -> releases/1.5.0    what the service runs
    /opt/doorscan/previous -> releases/1.4.0    where a rollback goes

A release is installed into ``releases/.partial-<version>`` and renamed into place only
once pip has finished (`install`); links change by renaming a new link over the old one
(`switch`, `roll_back`, through `device.boot_guard`, which rolls back too), which is
atomic. So a power cut or a SIGKILL at any moment
leaves ``current`` on a release that was completely installed, and at worst a partial
folder, which the next `install` removes. Whether the new release works is not this
room's question: the updater runs its self-test and rolls back when it fails.

The venv sees the system's packages (picamera2 comes from Raspberry Pi OS's apt, not
PyPI); pip installs the release's wheels offline, from the verified downloads only.
`run` is the command runner (`subprocess.run`'s shape), injectable for tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.boot_guard import link_release, linked_release
from doorscan.atomicfile import fsync_dir
from doorscan.errors import DoorscanError
from doorscan.release import check_version

if TYPE_CHECKING:  # TUF is imported only by a unit that fetches a release
    from device.updater import FetchedRelease

__all__ = ["InstallFailed", "ReleaseSlots"]

Runner = Callable[..., subprocess.CompletedProcess[Any]]
_PARTIAL = ".partial-"


class InstallFailed(DoorscanError):
    """A release could not be installed; the running one is untouched."""


class ReleaseSlots:
    """The releases under `root` (``/opt/doorscan`` on a unit)."""

    def __init__(self, root: Path, *, python: str = sys.executable, run: Runner = subprocess.run):
        self.root = root
        self.releases = root / "releases"
        self._python = python
        self._run = run

    # -- what is there ----------------------------------------------------------------

    def installed(self) -> list[str]:
        """The versions installed completely, in no particular order."""
        if not self.releases.is_dir():
            return []
        return [p.name for p in self.releases.iterdir() if not p.name.startswith(_PARTIAL)]

    def current(self) -> str | None:
        return linked_release(self.root, "current")

    def previous(self) -> str | None:
        return linked_release(self.root, "previous")

    # -- changing it ------------------------------------------------------------------

    def install(self, fetched: FetchedRelease) -> Path:
        """Release `fetched` as a venv of its own beside the others; its folder."""
        version = check_version(fetched.manifest.version)
        final = self.releases / version
        if final.exists():
            return final  # installed before, completely (only whole folders get the name)
        self.releases.mkdir(parents=True, exist_ok=True)
        for leftover in self.releases.glob(_PARTIAL + "*"):
            shutil.rmtree(leftover)  # an install that was cut short
        partial = self.releases / f"{_PARTIAL}{version}"
        wheels = [str(fetched.files[f.name]) for f in fetched.manifest.files if f.kind == "wheel"]
        folders = sorted({str(Path(w).parent) for w in wheels})
        venv = [self._python, "-m", "venv", "--system-site-packages", "--without-pip"]
        self._step("making the venv", [*venv, str(partial)])
        find_links = [arg for folder in folders for arg in ("--find-links", folder)]
        self._step(
            "installing the wheels",
            [
                self._python, "-m", "pip", "--python", str(partial / "bin" / "python"),
                "install", "--quiet", "--no-index", *find_links, *wheels,
            ]
        )  # fmt: skip
        partial.replace(final)
        fsync_dir(self.releases)
        return final

    def switch(self, version: str) -> None:
        """Run `version` from now on; the one running now becomes ``previous``."""
        if version not in self.installed():
            raise InstallFailed(f"release {version} is not installed")
        running = self.current()
        if running == version:
            return
        if running is not None:
            self._link("previous", running)
        self._link("current", version)

    def roll_back(self) -> str:
        """Back to ``previous``; the version now running is returned."""
        before = self.previous()
        if before is None or before not in self.installed():
            raise InstallFailed("no previous release to go back to")
        failed = self.current()
        self._link("current", before)
        if failed is not None:
            self._link("previous", failed)
        return before

    def _link(self, name: str, version: str) -> None:
        link_release(self.root, name, version)

    def _step(self, what: str, command: Sequence[str]) -> None:
        done = self._run(list(command), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout or "").strip()[-400:]
            raise InstallFailed(f"{what} failed: {detail}")
