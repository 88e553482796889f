"""`python -m provisioning`: the technicians' command line.

    python -m provisioning [--home DIR] init [--force] [--broker-host hub.local]
    python -m provisioning broker-files --out broker/ --port 8883 --host hub.local
    python -m provisioning broker-address [--host hub.local --port 8883 --tls|--plain]
    python -m provisioning add-venue --id bv-gia-lai --name "Bệnh viện Gia Lai"
    python -m provisioning add-device --id bv-gia-lai-door-1 --venue bv-gia-lai --publish-to
    python -m provisioning card --name "Rơ Châm H'Hen" --contact "0905 123 456"
    python -m provisioning list [--json]
    python -m provisioning publish
    python -m provisioning unit-cert --id bv-gia-lai-door-1 --out units/
    python -m provisioning revoke bv-gia-lai-door-1 --publish-to
    python -m provisioning enroll --venue bv-gia-lai [--ttl-minutes 15] [--out qr.png]
    python -m provisioning enroll-server --listen 0.0.0.0:8443 --server-cert PEM ...
    python -m provisioning release init | build --version 1.4.0 | stamp | list

The home folder is `--home`, else `$DOORSCAN_FLEET`, else `./fleet` (see
`provisioning.fleet`). Every command prints what it wrote; a refusal prints one line
to stderr and exits 1 (2 for a command line that cannot be carried out, such as a unit
config with no broker host), never a traceback.

The broker's address is recorded once in the home (`provisioning.broker_address`):
`init --broker-host` (TLS on 8883 unless `--plain`), `broker-files --host` (with the
CA and the provisioning certificate it wrote), or `broker-address`. `add-device`,
`publish`, `enroll-server` and `--publish-to` (given without a value) use it for what
their own flags leave out. Plain MQTT to another machine takes `--insecure`.

This module holds the registry commands and assembles the parser; the broker and
certificate commands are in `provisioning.broker_cli`, field enrollment in
`provisioning.enroll_cli`, the helpers they share in
`provisioning.cli_common`. Adding a command: write `register(commands)` that calls
`commands.add_parser(...)` and sets ``handler=`` (a function ``(args, home) -> int``)
with `set_defaults`, then add it to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from doorscan.atomicfile import write_atomic
from doorscan.errors import DoorscanError
from doorscan.timefmt import parse_rfc3339
from doorscan.wire import UnitRecord, VenueRecord
from provisioning import broker_cli, bundle, card_cli, enroll_cli, release_cli
from provisioning.broker_address import (
    PLAIN_PORT,
    TLS_PORT,
    BrokerChoice,
    BrokerRefused,
    check_plain,
    choose_broker,
    describe,
    load_broker,
    update_broker,
)
from provisioning.broker_pki import reserved_cn_reason
from provisioning.cli_common import (
    Commands,
    Handler,
    add_publish_to,
    broker_host,
    check_id,
    port_number,
    publish_now,
    publish_options,
    publish_registry,
    publish_target,
    publish_to_target,
    record,
    tls_usage_problem,
)
from provisioning.fleet import (
    FleetHome,
    InvalidInput,
    KeysExist,
    UnknownVenue,
    record_fields,
    write_unit_config,
)

__all__ = ["build_parser", "main"]


DEFAULT_DATA_DIR = "/var/lib/doorscan"


def _given(value: str | None, current: str) -> str:
    return current if value is None else value.strip()


# -- init ----------------------------------------------------------------------------


def _init(args: argparse.Namespace, home: FleetHome) -> int:
    replacing = home.private_key_path.exists()
    if args.broker_host is None and (args.broker_port is not None or args.plain):
        raise BrokerRefused("--broker-port and --plain describe --broker-host: give it too")
    if replacing and not args.force and args.broker_host is not None:
        raise KeysExist(
            f"{home.private_key_path} already exists; to record the broker only, run "
            f"`broker-address --host {args.broker_host}`"
        )
    signer = home.init(force=args.force)
    print(f"fleet home       {home.root}")
    print(f"card signing key {home.private_key_path} (mode 0600, key id {signer.key_id})")
    print(f"card public key  {home.public_key_path}")
    print(f"hub sealing key  {home.seal_private_path} (mode 0600; the hub's keys.seal_key)")
    print(f"registry         {home.registry_path}")
    if args.broker_host is not None:
        tls = not args.plain
        port = args.broker_port or (TLS_PORT if tls else PLAIN_PORT)
        broker, path = update_broker(home, host=args.broker_host, port=port, tls=tls)
        print(f"broker           {describe(broker)} (recorded in {path})")
    if replacing:
        print(
            "warning: the keys were replaced. Cards issued before no longer verify at units "
            "that get the new key; run add-device again for each unit to give it the new key.",
            file=sys.stderr,
        )
    return 0


def _register_init(commands: Commands) -> None:
    cmd = commands.add_parser("init", help="create the home folder, card-signing keys, registry")
    cmd.add_argument("--force", action="store_true", help="replace existing keys")
    cmd.add_argument(
        "--broker-host",
        type=broker_host,
        metavar="HOST",
        help="record the broker units and tools connect to (TLS unless --plain)",
    )
    cmd.add_argument(
        "--broker-port",
        type=port_number,
        metavar="PORT",
        help=f"its port (default {TLS_PORT}; {PLAIN_PORT} with --plain)",
    )
    cmd.add_argument("--plain", action="store_true", help="the broker speaks plain MQTT")
    cmd.set_defaults(handler=_init)


def _init_seal_key(args: argparse.Namespace, home: FleetHome) -> int:
    home.init_seal_key()
    print(f"hub sealing key  {home.seal_private_path} (mode 0600; the hub's keys.seal_key)")
    print(f"its public half  {home.seal_public_path}")
    print("units get it with their next add-device; until then they journal identities in clear")
    return 0


def _register_init_seal_key(commands: Commands) -> None:
    cmd = commands.add_parser(
        "init-seal-key", help="give a fleet home made before sealing the hub's sealing key pair"
    )
    cmd.set_defaults(handler=_init_seal_key)


# -- add-venue -----------------------------------------------------------------------


def _add_venue(args: argparse.Namespace, home: FleetHome) -> int:
    venue_id = check_id(args.id, "--id")
    target = publish_to_target(args, home)
    with home.registry() as registry:
        # On an update, an option left out keeps its value: fixing a typo in the name
        # must not wipe the address. `--address ""` clears it.
        old = registry.venue(venue_id)
        venue = record(
            VenueRecord,
            venue_id=venue_id,
            name=args.name.strip(),
            address=_given(args.address, old.address if old else ""),
            district=_given(args.district, old.district if old else ""),
        )
        created = registry.put_venue(venue)
    print(f"{'added' if created else 'updated'} venue {venue.venue_id}: {venue.name}")
    publish_now(target, home, [venue], [])
    return 0


def _register_add_venue(commands: Commands) -> None:
    cmd = commands.add_parser(
        "add-venue", parents=[publish_options()], help="register a venue (or update it)"
    )
    cmd.add_argument("--id", required=True, help="venue id, e.g. bv-gia-lai")
    cmd.add_argument("--name", required=True, help="the venue's name as people know it")
    cmd.add_argument("--address", help="street address (on an update: kept if left out)")
    cmd.add_argument("--district", help="district, huyện / quận (on an update: kept if left out)")
    add_publish_to(cmd)
    cmd.set_defaults(handler=_add_venue)


# -- add-device ----------------------------------------------------------------------


RELEASE_ROOT_NAME = "release-root.json"
"""The update repository's first root metadata, as a unit's config names it."""


def _registered_at(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with an offset"
        ) from None


def _unit_broker(args: argparse.Namespace, home: FleetHome, unit_id: str) -> BrokerChoice:
    """Where the unit will connect: the flags, else the recorded broker. Decided before
    anything is written: a config with no host would send the unit's scans to itself
    (the unit's default is 127.0.0.1:1883), so that is refused."""
    choice = choose_broker(
        load_broker(home),
        host=args.broker_host,
        port=args.broker_port,
        tls=True if args.tls else False if args.plain else None,
        flag="--broker-host HOST",
    )
    check_plain(choice, insecure=args.insecure, what=f"unit {unit_id}")
    return choice


def _add_device(args: argparse.Namespace, home: FleetHome) -> int:
    unit = record(
        UnitRecord,
        unit_id=check_id(args.id, "--id"),
        venue_id=check_id(args.venue, "--venue"),
        registered_at=args.registered_at,
    )
    # Before anything is written: the id becomes the unit's certificate CN, and some
    # CNs carry the hub's rights on the broker.
    if (reason := reserved_cn_reason(unit.unit_id)) is not None:
        raise InvalidInput(reason)
    signer = home.signer()
    with home.registry() as registry:
        venue = registry.venue(unit.venue_id)
    if venue is None:
        # Checked before anything is written, so a typo leaves no half-made unit.
        raise UnknownVenue(
            f"venue {unit.venue_id!r} is not registered; add it first with "
            f"`add-venue --id {unit.venue_id} --name NAME`"
        )
    choice = _unit_broker(args, home, unit.unit_id)
    target = publish_to_target(args, home)
    broker: dict[str, Any] = {"host": choice.host, "port": choice.port}
    if choice.tls:
        broker.update(broker_cli.unit_tls_settings(unit.unit_id))
    settings: dict[str, Any] = {
        "unit_id": unit.unit_id,
        "venue_id": unit.venue_id,
        "data_dir": args.data_dir,
        "decoder": args.decoder,
        "debounce_s": args.debounce_s,
        "broker": broker,
    }
    out_dir = args.out if args.out is not None else home.units_dir
    settings = {key: value for key, value in settings.items() if value is not None}
    trusted_root = home.root / "releases" / "metadata" / "1.root.json"
    if args.updates_url is not None:
        # Checked before anything is written: a unit told of a repository without the
        # root it trusts could never verify an update.
        if not trusted_root.is_file():
            raise InvalidInput(
                f"--updates-url: no update repository in {home.root} ({trusted_root} is "
                "missing); run `release init` first"
            )
        settings["updates"] = {"repo_url": args.updates_url, "trusted_root": RELEASE_ROOT_NAME}
    with home.registry() as registry:
        # A home made before sealing existed has no sealing key: such units stay unsealed.
        seal_pub = home.seal_public_path.read_bytes() if home.seal_public_path.exists() else None
        config, config_path, key_path = write_unit_config(out_dir, settings, signer, seal_pub)
        if config.updates is not None:
            write_atomic(out_dir / RELEASE_ROOT_NAME, trusted_root.read_bytes())
        if choice.tls:
            broker_cli.write_unit_cert(home, unit.unit_id, out_dir)
        created = registry.unit(unit.unit_id) is None
        unit = registry.put_unit(unit)
    print(f"{'added' if created else 'updated'} unit {unit.unit_id} at venue {venue.venue_id}")
    print(f"unit config  {config_path}")
    print(f"card key     {key_path} (key id {signer.key_id})")
    if config.seal_key is not None:
        print(f"sealing key  {out_dir / config.seal_key} (the hub's public key)")
    print(f"broker       {choice}")
    if choice.tls:
        print(f"broker TLS   {out_dir / config.unit_id}-cert.pem, -key.pem (0600), ca.pem")
    if config.updates is not None:
        print(f"updates      {config.updates.repo_url} (trusting {out_dir / RELEASE_ROOT_NAME})")
    print(
        f"to the unit: `provisioning bundle --config {config_path} --boot BOOT_PARTITION` "
        "(the unit takes it in as /etc/doorscan/unit.json)"
    )
    publish_now(target, home, [venue], [unit])
    return 0


def _register_add_device(commands: Commands) -> None:
    cmd = commands.add_parser(
        "add-device",
        parents=[publish_options()],
        help="register a door unit and write its config file",
    )
    cmd.add_argument("--id", required=True, help="unit id, e.g. bv-gia-lai-door-1")
    cmd.add_argument("--venue", required=True, help="id of a registered venue")
    cmd.add_argument(
        "--broker-host",
        type=broker_host,
        metavar="HOST",
        help="MQTT broker the unit sends to (default: the recorded broker)",
    )
    cmd.add_argument(
        "--broker-port",
        type=port_number,
        metavar="PORT",
        help="its port (default: the recorded one, else 8883 with TLS, 1883 plain)",
    )
    cmd.add_argument("--decoder", choices=("zxing", "zbar"), help="QR decoder library")
    cmd.add_argument("--debounce-s", type=float, help="'already in' window in seconds")
    cmd.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="where the unit keeps its journal (default %(default)s)",
    )
    cmd.add_argument(
        "--registered-at",
        type=_registered_at,
        metavar="TIME",
        help="when the unit was first put to work (RFC 3339; default now, and never moved "
        "once set): only for a unit that scanned before this registry knew it, e.g. moved "
        "from another fleet home. The hub holds apart any scan dated before it",
    )
    cmd.add_argument("--out", type=Path, help="folder for the config (default HOME/units)")
    cmd.add_argument(
        "--updates-url",
        metavar="URL",
        help="the update repository the unit takes signed releases from, e.g. "
        "https://hub.example:8443/releases (needs `release init`; without it the unit "
        "never updates itself)",
    )
    cmd.add_argument(
        "--tls",
        action="store_true",
        help="issue the unit's client certificate and make it connect with TLS (the default "
        "when the recorded broker is TLS; --plain for the opposite)",
    )
    add_publish_to(cmd)
    cmd.set_defaults(handler=_add_device)


# -- list ----------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _list(args: argparse.Namespace, home: FleetHome) -> int:
    with home.registry() as registry:
        venues, units, cards = registry.venues(), registry.units(), registry.cards()
    if args.json:
        data = {
            "venues": [record_fields(v) for v in venues],
            "units": [record_fields(u) for u in units],
            "cards": [
                {
                    "card_id": c.card_id,
                    "name": c.name,
                    "contact": c.contact,
                    "issued": c.issued.isoformat(),
                    "expires": c.expires.isoformat() if c.expires else None,
                    "revoked_on": c.revoked_on.isoformat() if c.revoked_on else None,
                    "key_id": c.key_id,
                }
                for c in cards
            ],
        }
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    print(f"venues ({len(venues)})")
    print(
        _table(
            ("id", "name", "district", "address"),
            [(v.venue_id, v.name, v.district, v.address) for v in venues],
        )
    )
    print(f"\nunits ({len(units)})")
    print(
        _table(
            ("id", "venue", "active"),
            [(u.unit_id, u.venue_id, "yes" if u.active else "no") for u in units],
        )
    )
    print(f"\ncards ({len(cards)})")
    print(
        _table(
            ("id", "name", "issued", "expires", "revoked", "key", "contact"),
            [
                (
                    c.card_id,
                    c.name,
                    c.issued.isoformat(),
                    c.expires.isoformat() if c.expires else "",
                    c.revoked_on.isoformat() if c.revoked_on else "",
                    c.key_id,
                    c.contact,
                )
                for c in cards
            ],
        )
    )
    return 0


def _register_list(commands: Commands) -> None:
    cmd = commands.add_parser("list", help="show venues, units and issued cards")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cmd.set_defaults(handler=_list)


# -- publish -------------------------------------------------------------------------


def _publish_all(args: argparse.Namespace, home: FleetHome) -> int:
    target = publish_target(args, home, args.broker_host, args.broker_port)
    with home.registry() as registry:
        venues, units = registry.venues(), registry.units()
        revocations = registry.card_revocations(datetime.now(UTC))
    # Even with an empty registry: the fleet's keys let the hub check its own.
    publish_registry(target, home, venues, units, revocations)
    return 0


def _register_publish(commands: Commands) -> None:
    cmd = commands.add_parser(
        "publish",
        parents=[publish_options()],
        help="publish every venue and unit, the card revocations and the fleet's public keys "
        "to the broker (retained, QoS 1)",
    )
    cmd.add_argument(
        "--broker-host",
        type=broker_host,
        metavar="HOST",
        help="MQTT broker the hub listens to (default: the recorded broker)",
    )
    cmd.add_argument(
        "--broker-port",
        type=port_number,
        metavar="PORT",
        help="its port (default: the recorded one, else 8883 with TLS, 1883 plain)",
    )
    cmd.set_defaults(handler=_publish_all)


# -- entry point -------------------------------------------------------------------------


COMMANDS: list[Callable[[Commands], None]] = [
    _register_init,
    _register_init_seal_key,
    _register_add_venue,
    _register_add_device,
    card_cli.register,
    _register_list,
    _register_publish,
    broker_cli.register,
    enroll_cli.register,
    bundle.register,
    release_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioning", description="Fleet keys, venues, units and visitor cards."
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="fleet home folder (default $DOORSCAN_FLEET, else ./fleet)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (problem := tls_usage_problem(args)) is not None:
        parser.error(problem)  # exits 2, before anything is changed
    handler: Handler = args.handler
    try:
        return handler(args, FleetHome.locate(args.home))
    except BrokerRefused as exc:  # a usage error, like argparse's: nothing was changed
        print(f"provisioning: error: {exc}", file=sys.stderr)
        return 2
    except DoorscanError as exc:
        print(f"provisioning: error: {exc}", file=sys.stderr)
    except OSError as exc:  # a folder that cannot be written, a disk that is full
        print(f"provisioning: error: {exc}", file=sys.stderr)
    return 1
