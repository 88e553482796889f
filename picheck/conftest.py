"""`make pi-check`: the unit on aarch64 Debian Bookworm, under qemu-user-static, in a chroot.

`arm_root` extracts the cached root (picheck/root.sh) into a scratch folder, mounts what a
running system has (/proc, /sys, /dev, a private /run and /dev/shm) and runs commands in it
as root or as the unit's user. The chroot shares the host's network: a unit inside reaches
a Mosquitto and a hub started on the host's loopback, as a Pi reaches them over the LAN.
There is no systemd inside (a chroot has no init); `tests.test_fleet_update.Service` plays
its part, running the service file's command lines through the chroot.

Nothing here is a Pi: no camera, no GPIO, no Raspberry Pi archive. Pins are gpiozero's
MockFactory and frames are image files; timings are an emulator's, not a Pi's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import _hub_vault_key, broker  # noqa: F401  (fixtures for the tests here)

TARBALL = Path(os.environ.get("PI_ROOT_TARBALL", "/var/cache/doorscan-pi/bookworm-arm64.tar.zst"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_USER = "doorscan"
_MOUNTS = (
    ("proc", ["-t", "proc", "proc"]),
    ("sys", ["-t", "sysfs", "sysfs"]),
    ("dev", ["--bind", "/dev"]),
    ("dev/pts", ["--bind", "/dev/pts"]),
    ("dev/shm", ["-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm"]),
    # Private: the host's /run/systemd/system would tell the installer systemd is running.
    ("run", ["-t", "tmpfs", "-o", "mode=0755", "run"]),
)


class ArmRoot:
    """An aarch64 Debian root on this machine's disk, commands run in it by chroot."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        cwd: str = "/",
        env: dict[str, str] | None = None,
    ) -> list[str]:
        """The host's command line that runs `argv` inside, with a clean environment."""
        home = "/root" if user is None else "/var/lib/doorscan"
        spec = [] if user is None else ["--userspec", f"{user}:{user}"]
        clean = {"HOME": home, "PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        # HTTPS from here goes through the machine's proxy, whose CA only the host's bundle
        # has; pip inside (the installer's) gets that bundle, on the private /run.
        if (self.path / "run" / "host-ca.crt").exists():
            clean |= {"PIP_CERT": "/run/host-ca.crt", "SSL_CERT_FILE": "/run/host-ca.crt"}
        clean |= env or {}
        settings = [f"{key}={value}" for key, value in clean.items()]
        enter = ["sh", "-c", 'cd "$0" && exec "$@"', cwd]
        return ["chroot", *spec, str(self.path), "/usr/bin/env", "-i", *settings, *enter, *argv]

    def run(
        self,
        *argv: str,
        user: str | None = None,
        cwd: str = "/",
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv, user=user, cwd=cwd, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def inside(self, path: str) -> Path:
        """The host's path of `path` inside the root."""
        return self.path / path.lstrip("/")

    def owner_ids(self, user: str) -> tuple[int, int]:
        """The uid and gid of `user` in the root's own /etc/passwd."""
        for line in self.inside("/etc/passwd").read_text().splitlines():
            name, _, uid, gid, *_ = line.split(":")
            if name == user:
                return int(uid), int(gid)
        raise KeyError(user)


def _mounted(root: Path) -> list[str]:
    prefix = f"{root}/"
    lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    return [line.split()[1] for line in lines if line.split()[1].startswith(prefix)]


@pytest.fixture(scope="module")
def arm_root() -> Iterator[ArmRoot]:
    if not TARBALL.is_file():
        pytest.fail(f"no arm64 root at {TARBALL}: `make pi-check` builds it (picheck/root.sh)")
    # Not under pytest's basetemp: pytest deletes old runs' folders there, and a run killed
    # before its teardown could leave the host's /dev bound inside one.
    path = Path(tempfile.mkdtemp(prefix="doorscan-arm64-", dir="/var/tmp"))
    # Owners and modes as they were: root's files stay root's, the unit's user's its own.
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-xpf", str(TARBALL), "-C", str(path)],
        check=True,
    )
    done: list[Path] = []
    try:
        for where, how in _MOUNTS:
            target = path / where
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *how, str(target)], check=True)
            done.append(target)
        shutil.copy(Path("/etc/resolv.conf").resolve(), path / "etc" / "resolv.conf")
        bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        if bundle and Path(bundle).is_file():
            shutil.copy(bundle, path / "run" / "host-ca.crt")
        yield ArmRoot(path)
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "--lazy", str(target)], check=False)
        if not _mounted(path):  # never delete through a mount: /dev is the host's
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
