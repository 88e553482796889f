"""`python -m provisioning bundle`: a unit's config folder, packed for the SD card.

    python -m provisioning add-device --id bv-gia-lai-door-1 --venue bv-gia-lai \\
        --data-dir /var/lib/doorscan --out units/bv-gia-lai-door-1   # the recorded broker
    python -m provisioning bundle --config units/bv-gia-lai-door-1/bv-gia-lai-door-1.json \\
        --boot /media/$USER/bootfs

The bundle (format in `doorscan.bundle`) holds the config and exactly the files it
names (CA, certificate, private key, card keys, the hub's sealing key), each checked
to sit beside the config, so the unit can take the folder in as it is. It is written
under a temporary name and renamed at the end: a card pulled out half way holds no
bundle rather than half of one.

It is the last check before a unit leaves the office: a config that names no broker
host (the unit would connect to 127.0.0.1, itself) is refused, and so is plain MQTT to
another machine unless `--insecure` (`provisioning.broker_address`).
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from device.config import UnitConfig
from doorscan.atomicfile import write_atomic
from doorscan.bundle import BUNDLE_DIR, FORMAT, MANIFEST, BundleManifest, file_digest
from provisioning.broker_address import BrokerChoice, BrokerRefused, check_plain
from provisioning.cli_common import Commands
from provisioning.fleet import FleetHome, InvalidInput, describe_validation_error

__all__ = ["register", "write_bundle"]


def _named_files(config: UnitConfig) -> list[Path]:
    broker = config.broker
    named = [broker.ca_file, broker.cert_file, broker.key_file, broker.password_file]
    named += [*config.card_keys, config.seal_key]
    if config.updates is not None:
        named.append(config.updates.trusted_root)
    return [path for path in named if path is not None]


def _check_broker(config_path: Path, raw: object, config: UnitConfig, insecure: bool) -> None:
    # The raw file, not the model: the model fills a missing host with 127.0.0.1.
    broker = raw.get("broker") if isinstance(raw, dict) else None
    if not isinstance(broker, dict) or "host" not in broker:
        raise BrokerRefused(
            f"{config_path} names no broker host: the unit would connect to "
            f"{config.broker.host}:{config.broker.port}, itself. Write it again with "
            "add-device after `init --broker-host HOST` or `broker-files --host HOST`, or "
            "with --broker-host HOST"
        )
    choice = BrokerChoice(
        config.broker.host, config.broker.port, tls=config.broker.ca_file is not None
    )
    check_plain(choice, insecure=insecure, what=f"unit {config.unit_id}")


def write_bundle(
    config_path: Path, boot: Path, *, force: bool = False, insecure: bool = False
) -> Path:
    """Write ``boot/doorscan-bundle/`` for the unit config at `config_path`; return it.

    Raises `BrokerRefused` for a config with no broker host, or with plain MQTT to
    another machine unless `insecure`.
    """
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        config = UnitConfig.model_validate(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{config_path}: {exc}") from None
    except ValidationError as exc:
        raise InvalidInput(f"{config_path}: {describe_validation_error(exc)}") from None
    _check_broker(config_path, raw, config, insecure)
    source = config_path.parent
    names = [config_path.name]
    for path in _named_files(config):
        # The unit resolves these from the config's folder; a path elsewhere would point
        # at a file the bundle does not carry.
        if path.is_absolute() or len(path.parts) != 1:
            raise InvalidInput(f"{config_path}: {path} must be a file beside the config")
        if not (source / path).is_file():
            raise InvalidInput(f"{config_path} names {path}, which is not in {source}")
        names.append(path.name)
    if not boot.is_dir():
        raise InvalidInput(f"{boot} is not a folder (is the SD card's boot partition mounted?)")
    target = boot / BUNDLE_DIR
    if target.exists() and not force:
        raise InvalidInput(
            f"{target} already holds a bundle the unit has not taken in yet; --force replaces it"
        )
    staging = boot / f".{BUNDLE_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files: dict[str, str] = {}
    for name in dict.fromkeys(names):
        data = (source / name).read_bytes()
        write_atomic(staging / name, data, mode=0o600)
        files[name] = file_digest(staging / name)
    manifest = BundleManifest(
        format=FORMAT,
        unit_id=config.unit_id,
        config=config_path.name,
        created_at=datetime.now(UTC).replace(microsecond=0),
        files=files,
    )
    write_atomic(staging / MANIFEST, manifest.model_dump_json(indent=1).encode("utf-8"))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _bundle(args: argparse.Namespace, home: FleetHome) -> int:
    target = write_bundle(args.config, args.boot, force=args.force, insecure=args.insecure)
    print(f"bundle for the unit written to {target}")
    print("it holds the unit's private key: keep the card safe until the unit has booted once")
    print("the unit takes it in with `python -m device import-bundle` and deletes it")
    return 0


def register(commands: Commands) -> None:
    cmd = commands.add_parser(
        "bundle", help="write a unit's config folder onto an SD card's boot partition"
    )
    cmd.add_argument(
        "--config", type=Path, required=True, help="the unit config (add-device --out)"
    )
    cmd.add_argument("--boot", type=Path, required=True, help="the mounted boot partition")
    cmd.add_argument("--force", action="store_true", help="replace a bundle already there")
    cmd.add_argument(
        "--insecure",
        action="store_true",
        help="allow a config with plain MQTT to another machine (prints a warning)",
    )
    cmd.set_defaults(handler=_bundle)
