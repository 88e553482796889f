"""What every command module of `provisioning.cli` shares: argument types, the id check,
record validation, and publishing the registry (plain TCP or TLS) after a change.

A command module imports from here and never from `provisioning.cli`, which imports the
command modules to assemble the parser.

The TLS options are three files, like `doorscan-hub serve`, rather than a `--tls` flag
that finds the provisioning certificate by itself: `broker-files` writes that
certificate to its `--out` folder, wherever the technician chose, not into the fleet
home, so there is no place a flag could find it without guessing.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from doorscan.mqtt import TlsFiles
from doorscan.wire import ID_PATTERN, CardRevocations, UnitRecord, VenueRecord
from provisioning.fleet import FleetHome, InvalidInput, describe_validation_error
from provisioning.publish import PublishError, publish_messages, registry_messages

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Commands",
    "Handler",
    "check_id",
    "host_port",
    "publish_options",
    "publish_now",
    "publish_registry",
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
    return host, int(port)


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


def publish_options() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to the broker."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--timeout-s",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        help="give up on the broker after this many seconds (default %(default)s)",
    )
    tls = parent.add_argument_group(
        "broker TLS", "for the TLS listener of `broker-files`; give all three or none"
    )
    tls.add_argument("--ca-file", type=_pem_file, metavar="PEM", help="the fleet CA certificate")
    tls.add_argument(
        "--cert-file", type=_pem_file, metavar="PEM", help="provisioning-cert.pem (broker-files)"
    )
    tls.add_argument(
        "--key-file", type=_pem_file, metavar="PEM", help="provisioning-key.pem (broker-files)"
    )
    return parent


def tls_usage_problem(args: argparse.Namespace) -> str | None:
    """Why the TLS options are unusable as given (some but not all), or None."""
    given = [getattr(args, name, None) is not None for name in _TLS_OPTIONS]
    if any(given) and not all(given):
        return "--ca-file, --cert-file and --key-file go together"
    return None


def _client_tls(args: argparse.Namespace) -> TlsFiles | None:
    if args.ca_file is None:
        return None
    return TlsFiles(args.ca_file, args.cert_file, args.key_file)


def publish_registry(
    args: argparse.Namespace,
    host: str,
    port: int,
    venues: Sequence[VenueRecord],
    units: Sequence[UnitRecord],
    revocations: CardRevocations | None = None,
) -> int:
    messages = registry_messages(venues, units, revocations)
    tls = _client_tls(args)
    count = publish_messages(messages, host, port, timeout_s=args.timeout_s, tls=tls)
    how = " over TLS" if tls else ""
    print(
        f"published {count} retained message(s) to {host}:{port}{how}, each confirmed by the broker"
    )
    return count


def publish_now(
    args: argparse.Namespace,
    venues: Sequence[VenueRecord],
    units: Sequence[UnitRecord],
    revocations: CardRevocations | None = None,
) -> None:
    """`--publish-to` after a change that is already saved: say so if the broker fails."""
    if args.publish_to is None:
        return
    host, port = args.publish_to
    try:
        publish_registry(args, host, port, venues, units, revocations)
    except PublishError as exc:
        raise PublishError(
            f"{exc} (the registry change is saved; run `publish` when the broker is reachable)"
        ) from None
