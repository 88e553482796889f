"""What every command module of `provisioning.cli` shares: argument types, the id check,
record validation, and publishing the registry (plain TCP or TLS) after a change.

A command module imports from here and never from `provisioning.cli`, which imports the
command modules to assemble the parser.

Where to publish comes from the command's flags, else from the broker the home records
(`provisioning.broker_address`): `--publish-to` with no value, or `publish` with no
`--broker-host`, uses the recorded host, port and TLS files. `publish_target` decides
before the command changes anything, so a refusal (no host known, plain MQTT off this
machine without `--insecure`) leaves the home as it was.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from doorscan.mqtt import TlsFiles
from doorscan.wire import ID_PATTERN, CardRevocations, UnitRecord, VenueRecord, key_fingerprint
from provisioning.broker_address import (
    BrokerRefused,
    check_host,
    check_plain,
    choose_broker,
    load_broker,
    recorded_tls_files,
)
from provisioning.fleet import FleetHome, InvalidInput, describe_validation_error
from provisioning.fleet_keys import fleet_keys
from provisioning.publish import PublishError, publish_messages, registry_messages

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Commands",
    "Handler",
    "PublishTarget",
    "add_publish_to",
    "add_tls_files",
    "broker_host",
    "check_id",
    "host_port",
    "port_number",
    "publish_options",
    "publish_now",
    "publish_registry",
    "publish_target",
    "publish_to_target",
    "record",
    "tls_usage_problem",
]

Handler = Callable[[argparse.Namespace, FleetHome], int]
Commands = Any  # argparse's _SubParsersAction is private; it is only passed along
DEFAULT_TIMEOUT_S = 10.0
_ID_RE = re.compile(ID_PATTERN)
_TLS_OPTIONS = ("ca_file", "cert_file", "key_file")
M = TypeVar("M", bound=BaseModel)


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:1883
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return broker_host(host), int(port)


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535, checked while parsing."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def broker_host(text: str) -> str:
    """A `--broker-host`/`--host` value: a name or address, checked while parsing."""
    try:
        return check_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _pem_file(text: str) -> Path:
    # Checked while parsing: `--publish-to` publishes after the change is saved, and a
    # typo in a path should stop the command before it changes anything.
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def check_id(value: str, option: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise InvalidInput(
            f"{option} {value!r}: an id is 1-63 characters of lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit (it becomes an MQTT topic level)"
        )
    return value


def record(model: type[M], **fields: Any) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None


def add_tls_files(parser: argparse.ArgumentParser, title: str, description: str) -> None:
    """--ca-file, --cert-file and --key-file: the provisioning client's TLS files."""
    tls = parser.add_argument_group(title, description)
    tls.add_argument("--ca-file", type=_pem_file, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument(
        "--cert-file", type=_pem_file, metavar="PEM", help="provisioning-cert.pem (broker-files)"
    )
    tls.add_argument(
        "--key-file", type=_pem_file, metavar="PEM", help="provisioning-key.pem (broker-files)"
    )


def publish_options() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to the broker."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--timeout-s",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        help="give up on the broker after this many seconds (default %(default)s)",
    )
    parent.add_argument(
        "--plain",
        action="store_true",
        help="plain MQTT even when the recorded broker is TLS (loopback, or with --insecure)",
    )
    parent.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain MQTT to a host that is not this machine (prints a warning)",
    )
    add_tls_files(
        parent,
        "broker TLS",
        "for the TLS listener of `broker-files`; give all three or none (default: the ones "
        "the home recorded)",
    )
    return parent


def add_publish_to(command: argparse.ArgumentParser, what: str = "publish it now") -> None:
    """`--publish-to [HOST:PORT]`: with no value, to the broker the home records."""
    command.add_argument(
        "--publish-to",
        nargs="?",
        const=True,  # given without a value: the recorded broker (see publish_to_target)
        type=host_port,
        metavar="HOST:PORT",
        help=f"{what}; with no value, to the recorded broker (`broker-address`)",
    )


def tls_usage_problem(args: argparse.Namespace) -> str | None:
    """Why the TLS options are unusable as given (some but not all), or None."""
    given = [getattr(args, name, None) is not None for name in _TLS_OPTIONS]
    if any(given) and not all(given):
        return "--ca-file, --cert-file and --key-file go together"
    if getattr(args, "tls", False) and getattr(args, "plain", False):
        return "--tls and --plain contradict each other"
    if any(given) and getattr(args, "plain", False):
        return "--plain and the TLS files (--ca-file ...) contradict each other"
    return None


def _client_tls(args: argparse.Namespace) -> TlsFiles | None:
    if getattr(args, "ca_file", None) is None:
        return None
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


@dataclass(frozen=True)
class PublishTarget:
    """Where and how one command publishes, decided before it changes anything."""

    host: str
    port: int
    tls: TlsFiles | None
    timeout_s: float


def publish_target(
    args: argparse.Namespace,
    home: FleetHome,
    host: str | None = None,
    port: int | None = None,
    *,
    flag: str = "--broker-host",
) -> PublishTarget:
    """The broker to publish to: `host`/`port` and the TLS flags of `args`, the rest as
    the home records it. TLS files given mean TLS, `--plain` means plain, else as
    recorded. Raises `BrokerRefused` (exit 2) when no host is known, when TLS is wanted
    without the provisioning certificate, or for plain MQTT off this machine without
    `--insecure`; `flag` names the option that gives a host."""
    recorded = load_broker(home)
    files = _client_tls(args)
    tls = True if files is not None else False if args.plain else None
    choice = choose_broker(recorded, host=host, port=port, tls=tls, flag=flag)
    if choice.tls and files is None:
        files = recorded_tls_files(recorded)
        if files is None:
            raise BrokerRefused(
                f"publishing to {choice.host}:{choice.port} over TLS needs the provisioning "
                "certificate: pass --ca-file, --cert-file and --key-file (broker-files wrote "
                "them), or record them with `broker-files` or `broker-address`"
            )
    check_plain(choice, insecure=args.insecure, what="publishing")
    return PublishTarget(choice.host, choice.port, files, args.timeout_s)


def publish_to_target(args: argparse.Namespace, home: FleetHome) -> PublishTarget | None:
    """`--publish-to` decided (see `publish_target`), or None when it was not given."""
    if args.publish_to is None:
        return None
    host, port = (None, None) if args.publish_to is True else args.publish_to
    return publish_target(args, home, host, port, flag="--publish-to HOST:PORT")


def publish_registry(
    target: PublishTarget,
    home: FleetHome,
    venues: Sequence[VenueRecord],
    units: Sequence[UnitRecord],
    revocations: CardRevocations | None = None,
) -> int:
    """Publish these records, and always the fleet's public keys, to `target`."""
    keys = fleet_keys(home, datetime.now(UTC))
    messages = registry_messages(venues, units, revocations, keys)
    count = publish_messages(
        messages, target.host, target.port, timeout_s=target.timeout_s, tls=target.tls
    )
    how = " over TLS" if target.tls else ""
    print(
        f"published {count} retained message(s) to {target.host}:{target.port}{how}, "
        "each confirmed by the broker"
    )
    seal = (
        key_fingerprint(keys.seal_public_key) if keys.seal_public_key else "none (scans in clear)"
    )
    cards = ", ".join(key_fingerprint(k) for k in keys.card_public_keys)
    print(f"fleet keys: hub sealing key {seal}; card key {cards}")
    return count


def publish_now(
    target: PublishTarget | None,
    home: FleetHome,
    venues: Sequence[VenueRecord],
    units: Sequence[UnitRecord],
    revocations: CardRevocations | None = None,
) -> None:
    """`--publish-to` after a change that is already saved: say so if the broker fails."""
    if target is None:
        return
    try:
        publish_registry(target, home, venues, units, revocations)
    except PublishError as exc:
        raise PublishError(
            f"{exc} (the registry change is saved; run `publish` when the broker is reachable)"
        ) from None
