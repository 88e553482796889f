"""Taking in the offline config bundle from the boot partition (`doorscan.bundle`).

    python -m device import-bundle --boot /boot/firmware --into /etc/doorscan

Run at boot before the unit starts (the unit's service does it first). In order:

1. no ``doorscan-bundle/`` on the boot partition: nothing to do (exit 0);
2. the manifest must parse and every file must be there with its digest, so a half
   copied or hand-edited bundle is refused whole and nothing is changed;
3. the config must be one the unit accepts (`load_config`, checked on the copies in a
   staging folder beside the target, so relative paths resolve as they will later);
4. the files replace those in `--into`, the private key and password mode 0600, and the
   config is written as ``unit.json`` whatever its name in the bundle (provisioning names
   it ``<unit id>.json``): /etc/doorscan/unit.json is the file the service runs, as after
   enrollment. Renamed, not linked: one file, and a later bundle for another unit id
   replaces it instead of leaving a link to the old one;
5. the bundle is deleted from the boot partition, because FAT has no file modes and
   anyone who takes the card out could read the key there. A boot partition mounted
   read-only cannot be cleaned: the import still counts, and the error says so loudly.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from device.config import UNIT_CONFIG_NAME, load_config
from doorscan.atomicfile import write_atomic
from doorscan.bundle import BUNDLE_DIR, MANIFEST, BundleManifest, file_digest
from doorscan.errors import ConfigError

__all__ = ["BundleError", "Imported", "import_bundle"]

log = logging.getLogger(__name__)


class BundleError(ConfigError):
    """The bundle cannot be taken in; nothing was changed."""


@dataclass(frozen=True)
class Imported:
    unit_id: str
    config_path: Path
    files: list[str]
    bundle_removed: bool


def _manifest(source: Path) -> BundleManifest:
    try:
        return BundleManifest.model_validate_json((source / MANIFEST).read_bytes())
    except OSError as exc:
        raise BundleError(f"{source}: no readable {MANIFEST} ({exc})") from None
    except ValidationError as exc:
        raise BundleError(f"{source / MANIFEST}: {exc.errors()[0]['msg']}") from None


def import_bundle(boot: Path, into: Path) -> Imported | None:
    """Install the bundle found on `boot` into `into`; None when there is none."""
    source = boot / BUNDLE_DIR
    if not source.is_dir():
        return None
    manifest = _manifest(source)
    contents: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        path = source / name
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{source}: {name} is missing; copy the bundle again")
        if file_digest(path) != digest:
            raise BundleError(f"{source}: {name} differs from the manifest; copy it again")
        contents[name] = path.read_bytes()
    if UNIT_CONFIG_NAME in contents and manifest.config != UNIT_CONFIG_NAME:
        raise BundleError(
            f"{source}: {UNIT_CONFIG_NAME} is not the bundle's config, but the config is "
            "installed under that name; rename the other file"
        )
    into.mkdir(parents=True, exist_ok=True)
    staging = into.parent / f".{into.name}.bundle-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        for name, data in contents.items():
            write_atomic(staging / name, data, mode=0o600)
        config = load_config(staging / manifest.config)  # raises ConfigError with the why
        if config.unit_id != manifest.unit_id:
            raise BundleError(
                f"{source}: the manifest is for {manifest.unit_id}, the config for {config.unit_id}"
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    private = {p.name for p in (config.broker.key_file, config.broker.password_file) if p}
    # The config goes last: until it is replaced the unit runs on its old, whole set.
    for name in sorted(contents, key=lambda n: n == manifest.config):
        target = UNIT_CONFIG_NAME if name == manifest.config else name
        write_atomic(into / target, contents[name], mode=0o600 if name in private else 0o644)
    removed = True
    try:
        shutil.rmtree(source)
    except OSError as exc:
        removed = False
        log.error(
            "imported, but could not delete %s (%s): it holds the unit's private key; "
            "delete it by hand",
            source,
            exc,
        )
    return Imported(manifest.unit_id, into / UNIT_CONFIG_NAME, list(contents), removed)
