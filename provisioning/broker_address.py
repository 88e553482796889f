"""Where the fleet's units and tools connect: the broker's address, recorded once per home.

    broker.json   {"host": "hub.local", "port": 8883, "tls": true,
                   "ca_file": "/home/tech/broker/ca.pem",
                   "cert_file": "/home/tech/broker/provisioning-cert.pem",
                   "key_file": "/home/tech/broker/provisioning-key.pem"}

`init --broker-host`, `broker-files --host` and `broker-address` write it; `add-device`,
`bundle`, `enroll-server`, `publish` and every `--publish-to` read it for whatever their
own flags leave out (a flag given always wins). The three files are the provisioning
client's, for publishing over TLS; `broker-files` records the ones it wrote.

Two rules hold for every command that writes a unit config or talks to the broker:

1. No host, no config. A unit config without ``broker.host`` falls back to the unit's
   default, 127.0.0.1:1883: the unit would send its scans to itself. Such a command is
   refused (`BrokerRefused`, exit 2) before anything is written.
2. Plain MQTT stays on this machine. Plain TCP to a host that is not loopback carries
   the registry, configs and credentials readable across the network; it takes
   ``--insecure`` on that command, which then prints a warning. Loopback (127.0.0.0/8,
   ::1, localhost) stays allowed: the tests and `make demo` use a loopback Mosquitto.

Use::

    recorded = load_broker(home)                       # None if nothing was recorded
    choice = choose_broker(recorded, host=None, port=None, tls=None, flag="--broker-host")
    check_plain(choice, insecure=False, what="the unit")  # raises, or warns, or passes
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from doorscan.atomicfile import write_atomic
from doorscan.mqtt import TlsFiles
from doorscan.netaddr import is_loopback
from provisioning.fleet import FleetHome, ProvisioningError, describe_validation_error

__all__ = [
    "BROKER_FILE",
    "PLAIN_PORT",
    "TLS_PORT",
    "BrokerChoice",
    "BrokerRefused",
    "RecordedBroker",
    "check_host",
    "check_plain",
    "choose_broker",
    "host_and_port",
    "describe",
    "load_broker",
    "no_host_message",
    "recorded_tls_files",
    "save_broker",
    "update_broker",
]

BROKER_FILE = "broker.json"
TLS_PORT = 8883
PLAIN_PORT = 1883
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class BrokerRefused(ProvisioningError, ValueError):
    """No broker host is known, or plain MQTT would leave this machine without --insecure."""


def check_host(text: str) -> str:
    """A broker host as a unit config takes it: a DNS name, an IPv4 or an IPv6 address.

    Refuses what a technician mistypes into a host: a URL, ``host:port``, spaces.
    """
    host = text.strip()
    if "/" in host:
        raise ValueError(f"{text!r} is not a host name or address (a name, not a URL)")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host.strip("[]")))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a host name or address (the port has an option of its own)"
            ) from None
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{text!r} is not a host name or address")
    return host


def host_and_port(host: str, port: int) -> str:
    """``host:port`` as people write it, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RecordedBroker(BaseModel):
    """The broker's address as the fleet home records it (``broker.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    host: str | None = Field(
        None, description="the name or address units and tools connect to (None: not known yet)"
    )
    port: int = Field(TLS_PORT, ge=1, le=65535, description="its port; the TLS port when tls")
    tls: bool = Field(True, description="connect with TLS (the listener of `broker-files`)")
    ca_file: Path | None = Field(None, description="the fleet CA the broker's cert is checked with")
    cert_file: Path | None = Field(None, description="provisioning-cert.pem, for publishing")
    key_file: Path | None = Field(None, description="provisioning-key.pem, for publishing")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else check_host(value)


def _path(home: FleetHome) -> Path:
    return home.root / BROKER_FILE


def load_broker(home: FleetHome) -> RecordedBroker | None:
    """The recorded broker, or None when the home has none; a damaged file is an error."""
    path = _path(home)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RecordedBroker.model_validate_json(raw)
    except ValidationError as exc:
        raise ProvisioningError(
            f"{path}: {describe_validation_error(exc)}; fix it with `broker-address`"
        ) from None


def save_broker(home: FleetHome, broker: RecordedBroker) -> Path:
    """Write ``broker.json`` atomically (no secret in it: paths and an address)."""
    path = _path(home)
    write_atomic(path, (broker.model_dump_json(indent=1) + "\n").encode("utf-8"), mode=0o644)
    return path


def update_broker(
    home: FleetHome,
    *,
    host: str | None = None,
    port: int | None = None,
    tls: bool | None = None,
    files: TlsFiles | None = None,
) -> tuple[RecordedBroker, Path]:
    """Change what is given, keep the rest, write the file; return the record and its path.

    Nothing recorded yet starts from TLS on 8883. Switching between TLS and plain
    without a port moves to that protocol's usual port (8883, 1883). File paths are
    recorded absolute: the commands that read them may run from another folder.
    """
    recorded = load_broker(home) or RecordedBroker()
    fields = recorded.model_dump()
    if host is not None:
        fields["host"] = host
    if tls is not None and port is None and tls != recorded.tls:
        port = TLS_PORT if tls else PLAIN_PORT
    if port is not None:
        fields["port"] = port
    if tls is not None:
        fields["tls"] = tls
    if files is not None:
        fields.update(
            ca_file=Path(files.ca_file).resolve(),
            cert_file=None if files.cert_file is None else Path(files.cert_file).resolve(),
            key_file=None if files.key_file is None else Path(files.key_file).resolve(),
        )
    try:
        broker = RecordedBroker.model_validate(fields)
    except ValidationError as exc:
        raise BrokerRefused(f"broker address: {describe_validation_error(exc)}") from None
    path = save_broker(home, broker)
    if not broker.tls and broker.host is not None and not is_loopback(broker.host):
        print(
            f"provisioning: warning: plain MQTT to {host_and_port(broker.host, broker.port)} "
            "is recorded; each command that uses it will ask for --insecure",
            file=sys.stderr,
        )
    return broker, path


def describe(broker: RecordedBroker) -> str:
    """One line for people: where, how, and with which files."""
    where = host_and_port(broker.host or "(no host yet)", broker.port)
    if not broker.tls:
        return f"{where}, plain MQTT"
    files = recorded_tls_files(broker)
    how = f", CA {broker.ca_file}" if broker.ca_file is not None else ""
    if files is not None:
        how += f", provisioning cert {files.cert_file}"
    return f"{where} over TLS{how}"


def recorded_tls_files(recorded: RecordedBroker | None) -> TlsFiles | None:
    """The provisioning client's TLS files from the record, when all three are there."""
    if recorded is None or recorded.ca_file is None:
        return None
    if recorded.cert_file is None or recorded.key_file is None:
        return None
    return TlsFiles(recorded.ca_file, recorded.cert_file, recorded.key_file)


def no_host_message(flag: str) -> str:
    return (
        "no broker host: record it once with `init --broker-host HOST`, `broker-files --host "
        f"HOST` or `broker-address --host HOST`, or pass {flag}"
    )


@dataclass(frozen=True)
class BrokerChoice:
    """Where one command connects, or tells a unit to connect."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return host_and_port(self.host, self.port) + (" (TLS)" if self.tls else "")


def choose_broker(
    recorded: RecordedBroker | None,
    *,
    host: str | None,
    port: int | None,
    tls: bool | None,
    flag: str,
) -> BrokerChoice:
    """The flags given, each one left out taken from the record.

    `tls` None means "as recorded" (plain if nothing is). A port left out is the
    recorded one when the record speaks the same protocol, else 8883 for TLS and 1883
    for plain. Raises `BrokerRefused` when no host is known; `flag` names the option
    that would give one.
    """
    if host is None and recorded is not None:
        host = recorded.host
    if host is None:
        raise BrokerRefused(no_host_message(flag))
    if tls is None:
        tls = recorded.tls if recorded is not None else False
    if port is None:
        if recorded is not None and recorded.tls == tls:
            port = recorded.port
        else:
            port = TLS_PORT if tls else PLAIN_PORT
    return BrokerChoice(host, port, tls)


def check_plain(choice: BrokerChoice, *, insecure: bool, what: str) -> None:
    """Refuse plain MQTT off this machine unless `insecure`, then warn on stderr.

    `what` says who would connect ("the unit", "publishing"), for the message.
    """
    if choice.tls or is_loopback(choice.host):
        return
    where = host_and_port(choice.host, choice.port)
    if not insecure:
        raise BrokerRefused(
            f"{what}: plain MQTT to {where} would cross the network unencrypted; use the "
            "broker's TLS listener (`broker-files`, then --tls or the recorded address), or "
            "pass --insecure to mean it"
        )
    print(
        f"provisioning: warning: {what}: plain MQTT to {where} (--insecure): what is sent "
        "crosses the network readable by anyone on it",
        file=sys.stderr,
    )
