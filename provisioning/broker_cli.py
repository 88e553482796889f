"""The broker and certificate commands of `python -m provisioning`.

    python -m provisioning broker-files --out broker/ --port 8883 --host hub.local [--hub-workers 4]
    python -m provisioning broker-address [--host hub.local] [--port 8883] [--tls | --plain]
    python -m provisioning unit-cert --id bv-gia-lai-door-1 --out units/
    python -m provisioning revoke bv-gia-lai-door-1 [--publish-to [hub.local:8883 --ca-file ...]]
        [--crl-to /etc/mosquitto/doorscan/crl.pem --reload-pid /run/mosquitto/mosquitto.pid]

They drive the fleet CA of `provisioning.broker_pki`; `add-device --tls` (in
`provisioning.cli`) issues the unit's certificate through `write_unit_cert` here.
`broker-files` records where the broker listens (its first `--host`, the TLS port, the
CA and provisioning certificate it wrote) in the home; `broker-address` shows or
changes that record (`provisioning.broker_address`).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from doorscan.mqtt import TlsFiles
from provisioning.broker_address import describe, load_broker, update_broker
from provisioning.broker_pki import (
    HUB_CN,
    HUB_CONFIG_CN,
    MAX_HUB_WORKERS,
    PROVISIONING_CN,
    BrokerPKI,
    acl_text,
    hub_worker_cn,
    mosquitto_conf_text,
    write_private,
    write_public,
)
from provisioning.cli_common import (
    Commands,
    add_publish_to,
    add_tls_files,
    broker_host,
    check_id,
    port_number,
    publish_now,
    publish_options,
    publish_to_target,
)
from provisioning.fleet import FleetHome, InvalidInput, ProvisioningError, write_atomic

__all__ = ["register", "unit_tls_settings", "write_unit_cert"]


def unit_tls_settings(unit_id: str) -> dict[str, str]:
    """The unit config's broker TLS keys, naming the files `write_unit_cert` writes."""
    # Names relative to the config: load_config resolves them from its folder.
    return {
        "ca_file": "ca.pem",
        "cert_file": f"{unit_id}-cert.pem",
        "key_file": f"{unit_id}-key.pem",
    }


def write_unit_cert(home: FleetHome, unit_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Issue `unit_id` a client certificate; write it, its key (0600) and the CA to `out_dir`."""
    pki = BrokerPKI(home.keys_dir)
    pki.ensure_ca()
    cert, key = pki.issue_client(unit_id)
    cert_path, key_path = out_dir / f"{unit_id}-cert.pem", out_dir / f"{unit_id}-key.pem"
    write_private(key_path, key)
    write_public(cert_path, cert)
    write_public(out_dir / "ca.pem", pki.ca_pem())
    return cert_path, key_path


# -- unit-cert -----------------------------------------------------------------------


def _unit_cert(args: argparse.Namespace, home: FleetHome) -> int:
    unit_id = check_id(args.id, "--id")
    home.require()
    with home.registry() as registry:
        if registry.unit(unit_id) is None:
            raise InvalidInput(f"unit {unit_id!r} is not registered; add-device it first")
    cert_path, key_path = write_unit_cert(home, unit_id, args.out)
    print(f"client cert  {cert_path} (CN {unit_id})")
    print(f"client key   {key_path} (mode 0600)")
    print(f"fleet CA     {args.out / 'ca.pem'}")
    return 0


def _register_unit_cert(commands: Commands) -> None:
    cmd = commands.add_parser("unit-cert", help="issue a registered unit a new client certificate")
    cmd.add_argument("--id", required=True, help="unit id")
    cmd.add_argument("--out", type=Path, required=True, help="folder for the cert, key and CA")
    cmd.set_defaults(handler=_unit_cert)


# -- broker-files --------------------------------------------------------------------


def _broker_files(args: argparse.Namespace, home: FleetHome) -> int:
    home.require()
    pki = BrokerPKI(home.keys_dir)
    if pki.ensure_ca():
        print(f"fleet CA     {pki.ca_path} (key {pki.ca_key_path}, mode 0600)")
    out: Path = args.out
    install_dir: Path = args.install_dir if args.install_dir is not None else out
    hosts = [*args.host, "127.0.0.1"]
    cert, key = pki.issue_server(hosts)
    write_private(out / "broker-key.pem", key)
    write_public(out / "broker-cert.pem", cert)
    write_public(out / "ca.pem", pki.ca_pem())
    write_public(out / "crl.pem", pki.write_crl())
    workers: int = args.hub_workers
    # Users only for the workers issued here: see acl_text for why not all 64.
    write_public(out / "acl", acl_text(workers).encode("utf-8"))
    conf = mosquitto_conf_text(args.port, install_dir, args.bind_address)
    write_public(out / "mosquitto.conf", conf.encode("utf-8"))
    roles = [("hub", HUB_CN), ("hub-config", HUB_CONFIG_CN), ("provisioning", PROVISIONING_CN)]
    roles += [(f"hub-{n}", hub_worker_cn(n)) for n in range(1, workers + 1)]
    for role, common_name in roles:
        cert, key = pki.issue_client(common_name, unit=False)
        write_private(out / f"{role}-key.pem", key)
        write_public(out / f"{role}-cert.pem", cert)
    print(f"broker files {out} (server cert for {', '.join(dict.fromkeys(hosts))})")
    print(f"  mosquitto.conf  TLS listener on port {args.port}; paths point at {install_dir}")
    print("  broker-cert.pem broker-key.pem ca.pem crl.pem acl")
    print("  hub-cert.pem hub-key.pem               the hub's (broker.cert_file, key_file)")
    print("  hub-config-cert.pem hub-config-key.pem for `doorscan-hub unit-config`")
    print("  provisioning-cert.pem provisioning-key.pem")
    if workers:
        pairs = [f"hub-{n}-cert.pem hub-{n}-key.pem" for n in sorted({1, workers})]
        print(f"  {' .. '.join(pairs)}  one pair per hub worker, for")
        print(
            f"      `doorscan-hub serve --workers {workers} "
            "--cert-file hub-{n}-cert.pem --key-file hub-{n}-key.pem ...`"
        )
    print("the broker's key must be readable by the user mosquitto runs as, and no one else")
    # Recorded last, once every file it names is written.
    files = TlsFiles(out / "ca.pem", out / "provisioning-cert.pem", out / "provisioning-key.pem")
    first_host = args.host[0] if args.host else None
    broker, path = update_broker(home, host=first_host, port=args.port, tls=True, files=files)
    print(f"broker address {describe(broker)} (recorded in {path})")
    if broker.host is None:
        print("  no --host: record the name units use with `broker-address --host HOST`")
    return 0


def _hub_workers(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_HUB_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of hub workers from 0 to {MAX_HUB_WORKERS}"
        )
    return int(text)


def _register_broker_files(commands: Commands) -> None:
    cmd = commands.add_parser(
        "broker-files", help="write the broker's TLS certificate, CA, CRL, ACL and config"
    )
    cmd.add_argument("--out", type=Path, required=True, help="folder to write them to")
    cmd.add_argument("--port", type=port_number, required=True, help="the TLS listener's port")
    cmd.add_argument(
        "--host",
        action="append",
        default=[],
        type=broker_host,
        help="a name or address clients use for the broker (repeatable; 127.0.0.1 always); "
        "the first is recorded as the fleet's broker",
    )
    cmd.add_argument("--bind-address", help="listen only on this address (default: all)")
    cmd.add_argument(
        "--hub-workers",
        type=_hub_workers,
        default=0,
        metavar="N",
        help="also issue hub-1 .. hub-N certificates for `doorscan-hub serve --workers N` "
        f"(0 to {MAX_HUB_WORKERS}; default 0)",
    )
    cmd.add_argument(
        "--install-dir",
        type=Path,
        help="where the files will live on the broker, for the config's paths (default --out)",
    )
    cmd.set_defaults(handler=_broker_files)


# -- revoke --------------------------------------------------------------------------


def _revoke(args: argparse.Namespace, home: FleetHome) -> int:
    unit_id = check_id(args.unit, "UNIT")
    target = publish_to_target(args, home)
    with home.registry() as registry:
        unit = registry.unit(unit_id)
        if unit is None:
            raise InvalidInput(f"unit {unit_id!r} is not registered")
        pki = BrokerPKI(home.keys_dir)
        pki.ensure_ca()
        count = pki.revoke(unit_id)
        # Inactive as well as revoked: the hub refuses its scans even through another path.
        inactive = unit.model_copy(update={"active": False})
        inactive = registry.put_unit(inactive)
        venue = registry.venue(unit.venue_id)
    print(f"revoked {count} certificate(s) of unit {unit_id}; it is marked inactive")
    # The hub first: once it reads the inactive record it refuses the unit's scans, even
    # over a connection the broker already let in.
    publish_now(target, home, [venue] if venue else [], [inactive])
    if args.crl_to is not None:
        write_atomic(args.crl_to, pki.crl_path.read_bytes(), mode=0o644)
        print(f"revocation list copied to {args.crl_to}")
    else:
        print(f"revocation list {pki.crl_path}: copy it to the broker's crlfile")
    if args.reload_pid is not None:
        reload_broker(args.reload_pid)
        print(f"mosquitto (pid file {args.reload_pid}) reloads it: new connections refused")
    else:
        print("then reload mosquitto (SIGHUP, `systemctl reload mosquitto`) to refuse it")
    return 0


def reload_broker(pid_file: Path) -> None:
    """Send SIGHUP to the Mosquitto whose pid is in `pid_file`.

    Mosquitto 2.0 rereads its TLS files, the CRL among them, on SIGHUP (tested in
    tests/test_revoke.py): a revoked unit cannot connect again. A connection that is
    already open stays open until it drops or the broker restarts; the hub refuses the
    scans that come over it in the meantime (the unit is inactive in the registry).
    """
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read the broker's pid from {pid_file}: {exc}") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ProvisioningError(f"cannot signal mosquitto (pid {pid}): {exc}") from None


def _register_revoke(commands: Commands) -> None:
    cmd = commands.add_parser(
        "revoke",
        parents=[publish_options()],
        help="revoke a unit's certificates and mark it inactive",
    )
    cmd.add_argument("unit", help="unit id (before --publish-to, which may take no value)")
    add_publish_to(cmd)
    cmd.add_argument(
        "--crl-to",
        type=Path,
        metavar="FILE",
        help="copy the new revocation list here (the broker's crlfile)",
    )
    cmd.add_argument(
        "--reload-pid",
        type=Path,
        metavar="PIDFILE",
        help="then tell the Mosquitto with this pid file to reload it (SIGHUP)",
    )
    cmd.set_defaults(handler=_revoke)


# -- broker-address ------------------------------------------------------------------


def _broker_address(args: argparse.Namespace, home: FleetHome) -> int:
    home.require()
    tls = True if args.tls else False if args.plain else None
    files = None if args.ca_file is None else TlsFiles(args.ca_file, args.cert_file, args.key_file)
    if args.host is None and args.port is None and tls is None and files is None:
        recorded = load_broker(home)
        if recorded is None:
            print(f"no broker recorded in {home.root}: record it with `broker-address --host HOST`")
        else:
            print(f"broker address {describe(recorded)}")
        return 0
    broker, path = update_broker(home, host=args.host, port=args.port, tls=tls, files=files)
    print(f"broker address {describe(broker)} (recorded in {path})")
    return 0


def _register_broker_address(commands: Commands) -> None:
    cmd = commands.add_parser(
        "broker-address",
        help="show or change the broker units and tools connect to (recorded in the home)",
        description="With no option, shows the recorded broker. Each option given changes "
        "that part and keeps the rest; nothing recorded yet starts from TLS on port 8883.",
    )
    cmd.add_argument("--host", type=broker_host, help="the name or address units connect to")
    cmd.add_argument(
        "--port", type=port_number, help="its port (default on a switch: 8883 TLS, 1883 plain)"
    )
    how = cmd.add_mutually_exclusive_group()
    how.add_argument("--tls", action="store_true", help="the broker's TLS listener")
    how.add_argument(
        "--plain", action="store_true", help="plain MQTT (other machines: --insecure on each use)"
    )
    add_tls_files(cmd, "provisioning TLS files", "what `publish` uses over TLS; all three or none")
    cmd.set_defaults(handler=_broker_address)


def register(commands: Commands) -> None:
    """Add unit-cert, broker-files, broker-address and revoke to the `provisioning` parser."""
    _register_unit_cert(commands)
    _register_broker_files(commands)
    _register_broker_address(commands)
    _register_revoke(commands)
