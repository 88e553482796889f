"""`release`: sign releases of the unit software for the fleet's update repository.

    python -m provisioning release init [--root-key-dir /media/usb/doorscan-root]
    python -m provisioning release build --version 1.4.0 [--wheel W.whl ...] [--service S]
        [--platform TAG ...|--platform native] [--find-links DIR ...] [--offline]
    python -m provisioning release stamp
    python -m provisioning release list

``init`` makes the keys and version 1 of the repository (`provisioning.release_repo`);
its root key is the one to carry away to removable media. ``build`` publishes a release:
given no ``--wheel``, it builds doorscan's own wheel from this checkout with pip, its
version set to the release's (so a unit's status says which release it runs), downloads
the wheels of its dependencies for the units' platform (``--platform``: a Raspberry Pi
on 64-bit Raspberry Pi OS Bookworm by default, ``native`` for this machine's), and adds
the unit's systemd service. A unit installs exactly these files, offline. Given
``--wheel``, those wheels are the whole release. ``stamp`` re-signs the timestamp,
which a timer must do daily. The repository is the folder ``releases/`` of the fleet
home: serve it as it is.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from provisioning.cli_common import Commands
from provisioning.fleet import FleetHome, InvalidInput
from provisioning.release_repo import ReleaseRepo, generate_keys

__all__ = ["register"]

_CHECKOUT = Path(__file__).resolve().parents[1]
_UNIT_SERVICE = _CHECKOUT / "deploy" / "doorscan-unit.service"


def _paths(home: FleetHome) -> tuple[Path, Path]:
    return home.root / "releases", home.root / "release-keys"


def _init(args: argparse.Namespace, home: FleetHome) -> int:
    folder, keys_dir = _paths(home)
    root_key_dir: Path = args.root_key_dir or home.root / "release-root-key"
    if not (keys_dir / "targets.pem").exists():
        generate_keys(keys_dir, root_key_dir)
    repo = ReleaseRepo.create(folder, keys_dir, root_key_dir, datetime.now(UTC))
    print(f"repository   {folder} (serve this folder as it is)")
    print(f"online keys  {keys_dir} (targets, snapshot, timestamp; mode 0600)")
    print(f"root key     {root_key_dir / 'root.pem'}: move it to removable media and lock it away")
    print(f"trusted root {repo.metadata_dir / '1.root.json'}: install it on every unit")
    return 0


_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "doorscan", "device", "hub", "provisioning")


# What pip may take for a Raspberry Pi 3/4/5 on 64-bit Raspberry Pi OS Bookworm: CPython
# 3.11 on aarch64 with glibc 2.36, so every manylinux tag up to 2.36 (pip does not
# widen a given manylinux_2_X tag to the older ones by itself).
PI_PYTHON = "3.11"
PI_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + [
    "manylinux2014_aarch64"
]


def _stamp_version(source: Path, version: str) -> None:
    """Give the copy of the sources the release's version, in its metadata and code."""
    for name, pattern, line in (
        ("pyproject.toml", r'(?m)^version = "[^"]*"$', f'version = "{version}"'),
        ("doorscan/__init__.py", r'(?m)^__version__ = "[^"]*"$', f'__version__ = "{version}"'),
    ):
        path = source / name
        text, count = re.subn(pattern, line, path.read_text(encoding="utf-8"), count=1)
        if count != 1:
            raise InvalidInput(f"no version line in {name} to set to {version}")
        path.write_text(text, encoding="utf-8")


def _dependencies(wheel: Path, out: Path, args: argparse.Namespace) -> list[Path]:
    """The wheels `wheel` needs, downloaded by pip for the units' platform, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    command += ["--dest", str(out)]
    if args.platform != ["native"]:
        command += ["--python-version", PI_PYTHON, "--implementation", "cp"]
        for platform in args.platform or PI_PLATFORMS:
            command += ["--platform", platform]
    for folder in args.find_links:
        command += ["--find-links", str(folder)]
    if args.offline:
        command.append("--no-index")
    done = subprocess.run([*command, str(wheel)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InvalidInput(f"pip could not get the dependencies: {done.stderr.strip()[-600:]}")
    return sorted(p for p in out.glob("*.whl") if p.name != wheel.name)


def _wheel_of_checkout(out: Path, version: str) -> Path:
    """doorscan's wheel at `version`, built by pip from a copy of this command's checkout.

    From a copy in `out`: setuptools writes ``build/`` and ``*.egg-info`` beside the
    sources it builds, and the checkout is not the build's to write in.
    """
    if not (_CHECKOUT / "pyproject.toml").exists():
        raise InvalidInput("no checkout to build doorscan's wheel from: give --wheel")
    source = out / "source"
    for name in _SOURCES:
        if (_CHECKOUT / name).is_dir():
            shutil.copytree(
                _CHECKOUT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        elif (_CHECKOUT / name).exists():
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(_CHECKOUT / name, source / name)
    _stamp_version(source, version)
    wheels = out / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels)]
    done = subprocess.run([*command, str(source)], capture_output=True, text=True, check=False)
    built = sorted(wheels.glob("doorscan-*.whl"))
    if done.returncode != 0 or len(built) != 1:
        raise InvalidInput(f"pip could not build doorscan's wheel: {done.stderr.strip()[-400:]}")
    return built[0]


def _build(args: argparse.Namespace, home: FleetHome) -> int:
    folder, keys_dir = _paths(home)
    repo = ReleaseRepo(folder, keys_dir)
    missing = [str(p) for p in [*args.wheel, *args.service] if not p.is_file()]
    if missing:
        raise InvalidInput(f"no such file: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="doorscan-release-") as scratch:
        wheels: list[Path] = args.wheel
        if not wheels:
            own = _wheel_of_checkout(Path(scratch), args.version)
            wheels = [own, *_dependencies(own, Path(scratch) / "dependencies", args)]
        services: list[Path] = args.service or [_UNIT_SERVICE]
        files: list[tuple[Path, Literal["wheel", "service"]]] = [
            *((w, "wheel") for w in wheels),
            *((s, "service") for s in services),
        ]
        manifest = repo.add_release(args.version, files, datetime.now(UTC))
    for listed in manifest.files:
        print(f"{listed.kind:8} {listed.name}  {listed.length:,} bytes  sha256 {listed.sha256}")
    print(f"release {manifest.version} signed and published in {folder}")
    return 0


def _stamp(args: argparse.Namespace, home: FleetHome) -> int:
    folder, keys_dir = _paths(home)
    expires = ReleaseRepo(folder, keys_dir).stamp(datetime.now(UTC))
    print(f"timestamp signed; valid until {expires.isoformat()}")
    return 0


def _list(args: argparse.Namespace, home: FleetHome) -> int:
    folder, keys_dir = _paths(home)
    for version in ReleaseRepo(folder, keys_dir).releases():
        print(version)
    return 0


def register(commands: Commands) -> None:
    release = commands.add_parser("release", help="sign releases of the unit software (TUF)")
    steps = release.add_subparsers(dest="release_command", required=True, metavar="STEP")
    init = steps.add_parser("init", help="make the release keys and the update repository")
    init.add_argument(
        "--root-key-dir",
        type=Path,
        metavar="DIR",
        help="where the root key goes (default: release-root-key/ in the fleet home)",
    )
    init.set_defaults(handler=_init)
    build = steps.add_parser("build", help="sign and publish a release")
    build.add_argument("--version", required=True, help="the release number, e.g. 1.4.0")
    build.add_argument(
        "--wheel",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a wheel to install on the units (repeatable; default: doorscan's, built here)",
    )
    build.add_argument(
        "--service",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a systemd unit file (repeatable; default: deploy/doorscan-unit.service)",
    )
    build.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="TAG",
        help="the units' wheel platform (repeatable; default: a Raspberry Pi on 64-bit "
        "Raspberry Pi OS Bookworm; 'native': this machine's)",
    )
    build.add_argument(
        "--find-links",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of dependency wheels pip looks in first (repeatable)",
    )
    build.add_argument(
        "--offline",
        action="store_true",
        help="take the dependencies from --find-links only, not from the package index",
    )
    build.set_defaults(handler=_build)
    stamp = steps.add_parser("stamp", help="re-sign the timestamp (daily, from a timer)")
    stamp.set_defaults(handler=_stamp)
    listing = steps.add_parser("list", help="the releases published")
    listing.set_defaults(handler=_list)
