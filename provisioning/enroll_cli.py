"""The field-enrollment commands of `python -m provisioning`.

    python -m provisioning enroll-bootstrap --server-url https://hub.local:8443 --out image/
    python -m provisioning enroll --venue bv-gia-lai [--ttl-minutes 15] [--out qr.png]
    python -m provisioning enroll-server --listen 0.0.0.0:8443 \\
        --server-cert broker/broker-cert.pem --server-key broker/broker-key.pem \\
        [--broker-host hub.local --broker-port 8883] \\
        [--publish-to [hub.local:8883 --ca-file ... --cert-file ... --key-file ...]]

`enroll-bootstrap` writes what every unit image carries before enrollment (public parts
only: `bootstrap.json`, the fleet CA, the enrollment public key). `enroll` prints a
one-time QR for one venue; the technician shows it to a unit in enrollment mode (`python
-m device enroll`), which then asks `enroll-server` for its certificate. The server's
own certificate is given as `--server-cert/--server-key` (the broker's, from
`broker-files`, will do: the fleet CA signed it for the hub's names) because
`--cert-file/--key-file` already name the publishing client's files. The broker units
are told to use is `--broker-host/--broker-port`, else the home's recorded broker
(`provisioning.broker_address`); an enrolled unit always connects with TLS, so the port
defaults to the recorded TLS port, else 8883.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from datetime import UTC, timedelta
from pathlib import Path

from pydantic import ValidationError

from device.enroll import EnrollmentConfig
from doorscan.atomicfile import write_atomic
from doorscan.wire import UnitRecord, VenueRecord
from provisioning.broker_address import TLS_PORT, choose_broker, load_broker
from provisioning.broker_pki import BrokerPKI
from provisioning.cli_common import (
    Commands,
    add_publish_to,
    broker_host,
    check_id,
    host_port,
    port_number,
    publish_now,
    publish_options,
    publish_to_target,
)
from provisioning.enroll import (
    DEFAULT_TTL,
    enroll_key_paths,
    enrollment_signer,
    issue_enrollment,
    qr_terminal,
    save_qr_png,
)
from provisioning.enroll_http import EnrollmentServer
from provisioning.enroll_server import EnrollmentService
from provisioning.fleet import FleetHome, InvalidInput, describe_validation_error

__all__ = ["register"]

VN_TIME = timedelta(hours=7)


# -- enroll --------------------------------------------------------------------------


def _enroll(args: argparse.Namespace, home: FleetHome) -> int:
    venue_id = check_id(args.venue, "--venue")
    if args.out is not None and args.out.suffix.lower() != ".png":
        raise InvalidInput(f"--out {args.out}: the enrollment QR is written as .png")
    issued = issue_enrollment(home, venue_id, timedelta(minutes=args.ttl_minutes))
    expires = issued.token.expires_at
    print(qr_terminal(issued.text), end="")
    if args.out is not None:
        save_qr_png(issued.text, args.out)
        print(f"wrote {args.out} (mode 0600)")
    local = (expires + VN_TIME).strftime("%H:%M")
    print(
        f"enrollment code for venue {venue_id}: one unit, until "
        f"{expires.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({local} Vietnam time)"
    )
    print(f"units verify it with {enroll_key_paths(home)[1]}")
    return 0


def _minutes(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None


def _register_enroll(commands: Commands) -> None:
    cmd = commands.add_parser("enroll", help="print a one-time QR that enrolls one unit at a venue")
    cmd.add_argument("--venue", required=True, help="id of a registered venue")
    cmd.add_argument(
        "--ttl-minutes",
        type=_minutes,
        default=DEFAULT_TTL.total_seconds() / 60,
        help="minutes the code stays valid, 1 to 1440 (default %(default)g)",
    )
    cmd.add_argument("--out", type=Path, help="also write the QR to FILE.png")
    cmd.set_defaults(handler=_enroll)


# -- enroll-server -------------------------------------------------------------------


def _enroll_server(args: argparse.Namespace, home: FleetHome) -> int:
    host, port = args.listen
    # Enrolled units get a certificate and always connect with TLS.
    units_broker = choose_broker(
        load_broker(home),
        host=args.broker_host,
        port=args.broker_port,
        tls=True,
        flag="--broker-host HOST",
    )
    target = publish_to_target(args, home)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def publish(venue: VenueRecord, unit: UnitRecord) -> None:
        publish_now(target, home, [venue], [unit])

    service = EnrollmentService(
        home,
        units_broker.host,
        units_broker.port,
        publish=publish if target is not None else None,
    )
    with EnrollmentServer(service, host, port, args.server_cert, args.server_key) as server:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: server.stop())
        print(f"enrollment server on https://{host}:{server.port}/v1/enroll", flush=True)
        print(f"enrolled units connect to {units_broker}", flush=True)
        server.serve_forever()
    print("enrollment server stopped")
    return 0


def _register_enroll_server(commands: Commands) -> None:
    cmd = commands.add_parser(
        "enroll-server",
        parents=[publish_options()],
        help="serve units' enrollment requests (HTTPS) until stopped",
    )
    cmd.add_argument("--listen", type=host_port, required=True, metavar="HOST:PORT")
    cmd.add_argument(
        "--server-cert", type=Path, required=True, metavar="PEM", help="this server's certificate"
    )
    cmd.add_argument(
        "--server-key", type=Path, required=True, metavar="PEM", help="its private key"
    )
    cmd.add_argument(
        "--broker-host",
        type=broker_host,
        metavar="HOST",
        help="broker host units are told to use (default: the recorded broker)",
    )
    cmd.add_argument(
        "--broker-port",
        type=port_number,
        metavar="PORT",
        help=f"its TLS port (default: the recorded TLS port, else {TLS_PORT})",
    )
    add_publish_to(cmd, "publish each new unit")
    cmd.set_defaults(handler=_enroll_server)


# -- enroll-bootstrap ------------------------------------------------------------------


def _enroll_bootstrap(args: argparse.Namespace, home: FleetHome) -> int:
    _, public_path = enroll_key_paths(home)
    enrollment_signer(home)  # made on first use, so the image and the QRs agree
    pki = BrokerPKI(home.keys_dir)
    pki.ensure_ca()
    settings = {
        "server_url": args.server_url,
        "ca_file": "ca.pem",
        "enroll_keys": [public_path.name],
        "data_dir": args.data_dir,
        "config_file": args.config_file,
    }
    try:
        EnrollmentConfig.model_validate(settings)
    except ValidationError as exc:
        raise InvalidInput(f"bootstrap: {describe_validation_error(exc)}") from None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "ca.pem", pki.ca_pem())
    write_atomic(out / public_path.name, public_path.read_bytes())
    text = json.dumps(settings, indent=2) + "\n"
    write_atomic(out / "bootstrap.json", text.encode("utf-8"))
    print(f"bootstrap    {out / 'bootstrap.json'} (public parts only: safe in every image)")
    print(f"fleet CA     {out / 'ca.pem'}")
    print(f"enroll key   {out / public_path.name}")
    print(f"the unit runs: python -m device enroll --config {out / 'bootstrap.json'}")
    return 0


def _register_enroll_bootstrap(commands: Commands) -> None:
    cmd = commands.add_parser(
        "enroll-bootstrap",
        help="write what a unit image carries before enrollment (public parts only)",
    )
    cmd.add_argument("--server-url", required=True, help="the enroll-server, https://HOST:PORT")
    cmd.add_argument("--out", type=Path, required=True, help="folder to write into")
    cmd.add_argument(
        "--data-dir",
        default="/var/lib/doorscan",
        help="where the unit keeps its key and certificate (default %(default)s)",
    )
    cmd.add_argument(
        "--config-file",
        default="/etc/doorscan/unit.json",
        help="where enrollment writes unit.json, the file the service reads (default %(default)s)",
    )
    cmd.set_defaults(handler=_enroll_bootstrap)


def register(commands: Commands) -> None:
    """Add enroll-bootstrap, enroll and enroll-server to the `provisioning` parser."""
    _register_enroll_bootstrap(commands)
    _register_enroll(commands)
    _register_enroll_server(commands)
