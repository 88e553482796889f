"""`release`: sign releases of the unit software for the fleet's update repository.

    python -m provisioning release init [--root-key-dir /media/usb/doorscan-root]
    python -m provisioning release build --version 1.4.0 [--wheel W.whl ...] [--service S]
    python -m provisioning release stamp
    python -m provisioning release list

``init`` makes the keys and version 1 of the repository (`provisioning.release_repo`);
its root key is the one to carry away to removable media. ``build`` publishes a release:
given no ``--wheel``, it builds doorscan's own wheel from this checkout with pip, and
adds the unit's systemd service. ``stamp`` re-signs the timestamp, which a timer must
do daily. The repository is the folder ``releases/`` of the fleet home: serve it as it is.
"""

from __future__ import annotations

import argparse
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


def _wheel_of_checkout(out: Path) -> Path:
    """doorscan's wheel, built by pip from a copy of the checkout this command runs from.

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
        wheels: list[Path] = args.wheel or [_wheel_of_checkout(Path(scratch))]
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
    build.set_defaults(handler=_build)
    stamp = steps.add_parser("stamp", help="re-sign the timestamp (daily, from a timer)")
    stamp.set_defaults(handler=_stamp)
    listing = steps.add_parser("list", help="the releases published")
    listing.set_defaults(handler=_list)
