"""What a running hub needs, checked before it runs: ``doorscan-hub check`` prints these,
``serve`` runs them and refuses to start on a failure.

One line per check: the files the config names can be read and are what they claim to
be; the database opens with the vault key (and is migrated, as ``serve`` would); the
hub's keys match the fleet's published `FleetKeys` (`hub.keycheck`, against the copy
the store kept from the last time they arrived); the broker answers a TLS handshake
with the hub's certificate; the HTTPS certificate is valid.

The broker check stops at the TLS handshake (and a moment to see whether the broker
rejects the certificate): an MQTT CONNECT with the hub's certificate would take the
running hub's place on the broker, which names a client after its certificate.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from doorscan.cards import CardKeyring
from doorscan.errors import DoorscanError
from doorscan.netaddr import is_loopback
from doorscan.sealing import load_private_key
from doorscan.wire import FleetKeys, decode_message
from hub.config import CREDENTIAL_PREFIX, HubConfig, http_problem, shown_url
from hub.keycheck import key_problems
from hub.store.factory import StoreError, is_postgres, open_hub_store, sqlite_path
from hub.vault import ENV_VAULT_KEY, Vault, VaultKeyError
from hub.workers import worker_path

__all__ = ["Check", "Status", "failures", "load_keys", "preflight", "render"]

CERT_WARN_DAYS = 30
BROKER_TIMEOUT_S = 5.0


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


class _Failed(DoorscanError):
    """One check's failure, with the line to print."""


def load_keys(config: HubConfig) -> tuple[X25519PrivateKey | None, CardKeyring | None]:
    """The sealing key and card keyring the config names; ValueError/OSError if unreadable."""
    sealing = load_private_key(config.keys.seal_key) if config.keys.seal_key else None
    cards = CardKeyring.from_pem_files(config.keys.card_keys) if config.keys.card_keys else None
    return sealing, cards


def preflight(config: HubConfig, *, reach_broker: bool = True) -> list[Check]:
    """Every check, in order; a check that cannot run because an earlier one failed says so."""
    checks: list[Check] = []

    def run(name: str, body: Callable[[], Check | str]) -> None:
        try:
            outcome = body()
        except (_Failed, DoorscanError, OSError, ValueError) as exc:
            checks.append(Check(name, Status.FAIL, str(exc)))
        else:
            checks.append(
                outcome if isinstance(outcome, Check) else Check(name, Status.OK, outcome)
            )

    keys: list[tuple[X25519PrivateKey | None, CardKeyring | None]] = []
    run("keys", lambda: _keys(config, keys))
    vault: list[Vault] = []
    run("vault key", lambda: _vault(config, vault))
    fleet: list[str] = []
    run("database", lambda: _database(config, vault, fleet))
    run("fleet keys", lambda: _fleet(keys, fleet))
    run("broker", lambda: _broker(config, reach_broker))
    run("http", lambda: _http(config))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status is Status.FAIL]


def render(checks: list[Check]) -> Iterator[str]:
    width = max(len(c.name) for c in checks)
    for check in checks:
        yield f"{check.status.value:<4}  {check.name:<{width}}  {check.detail}"


# -- the checks ----------------------------------------------------------------------------


def _keys(
    config: HubConfig, out: list[tuple[X25519PrivateKey | None, CardKeyring | None]]
) -> Check | str:
    try:
        out.append(load_keys(config))
    except (OSError, ValueError) as exc:
        raise _Failed(f"keys.seal_key / keys.card_keys: {exc}") from None
    sealing, cards = out[0]
    seal = f"seal key {config.keys.seal_key}" if sealing else "no seal key"
    if not sealing and not cards:
        return Check("keys", Status.WARN, "no seal key and no card key: only clear scans open")
    return f"{seal}; {len(cards or [])} card key(s)"


def _vault(config: HubConfig, out: list[Vault]) -> str:
    path = config.database.vault_key
    if path is None:
        raise _Failed(
            f"no vault key: set database.vault_key (or --vault-key, ${ENV_VAULT_KEY}); "
            "`doorscan-hub init-vault FILE` makes one"
        )
    if str(path).startswith(CREDENTIAL_PREFIX):
        raise _Failed(
            f"database.vault_key is {path}, but there is no $CREDENTIALS_DIRECTORY: a "
            "systemd credential is read inside a service that loads it (LoadCredential=); "
            "outside it, give --vault-key FILE"
        )
    try:
        out.append(Vault.load(path))
    except VaultKeyError as exc:
        raise _Failed(str(exc)) from None
    return f"{path} read"


def _database(config: HubConfig, vault: list[Vault], fleet: list[str]) -> Check | str:
    if not vault:
        raise _Failed("not opened: the vault key is needed first")
    url = config.database.url
    path = None if is_postgres(url) else sqlite_path(url)
    if path is not None and path != ":memory:" and not Path(path).exists():
        # Not made here: a check run as root (or with a typo) must not leave a database
        # file behind that the service then cannot write, or that nobody meant.
        return Check("database", Status.WARN, f"no database at {path} yet: serve makes it")
    try:
        with open_hub_store(config.database.url, vault=vault[0]) as store:
            counts = store.counts()
            kept = store.fleet_keys()
    except StoreError as exc:
        raise _Failed(str(exc)) from None
    if kept is not None:
        fleet.append(kept[0])
    return (
        f"{shown_url(config.database.url)} opened with the vault key, schema current; "
        f"{counts.get('scans', 0)} scans"
    )


def _fleet(
    keys: list[tuple[X25519PrivateKey | None, CardKeyring | None]], fleet: list[str]
) -> Check | str:
    if not fleet:
        return Check(
            "fleet keys",
            Status.WARN,
            "the fleet's keys have not reached this hub yet (`provisioning publish` sends "
            "them); they are compared when they arrive, and a mismatch stops the hub",
        )
    if not keys:
        raise _Failed("not compared: the hub's own keys could not be read")
    published = decode_message(fleet[0].encode("utf-8"), FleetKeys)
    problems = key_problems(published, *keys[0])
    if problems:
        raise _Failed(
            "; ".join(problems) + " (if it is the published keys that are wrong: publish the "
            "right ones, then `doorscan-hub fleet-keys --forget`)"
        )
    seal = "the seal key opens what units seal" if published.seal_public_key else "no sealing"
    return f"match the fleet's keys of {published.issued_at:%Y-%m-%d %H:%M} UTC: {seal}, " + (
        f"{len(published.card_public_keys)} card key(s) trusted"
    )


def _broker(config: HubConfig, reach: bool) -> Check | str:
    broker = config.broker
    if broker.host is None:
        raise _Failed("no broker host: set broker.host (or --broker-host)")
    target = f"{broker.host}:{broker.effective_port}"
    if not broker.tls and not is_loopback(broker.host) and not broker.insecure:
        raise _Failed(
            f"plain MQTT to {target} would cross the network unencrypted: set the TLS files "
            "(broker.ca_file, cert_file, key_file) or broker.insecure = true"
        )
    # With workers, each has its own certificate ({n} in the paths): the first stands
    # for all here (`serve` checks that every worker's files exist before it starts).
    cert = broker.cert_file and worker_path(broker.cert_file, 1)
    key = broker.key_file and worker_path(broker.key_file, 1)
    _files_exist(
        ("broker.ca_file", broker.ca_file),
        ("broker.cert_file", cert),
        ("broker.key_file", key),
    )
    if not reach:
        return Check("broker", Status.OK, f"{target} (not contacted)")
    try:
        with socket.create_connection(
            (broker.host, broker.effective_port), BROKER_TIMEOUT_S
        ) as raw:
            if not broker.tls:
                return f"{target} answers (plain MQTT{', insecure' if broker.insecure else ''})"
            assert broker.ca_file and cert and key  # validated together
            return _tls_handshake(raw, config, cert, key)
    except ssl.SSLError as exc:
        raise _Failed(f"{target}: TLS refused: {exc.reason or exc}") from None
    except OSError as exc:
        raise _Failed(f"{target} does not answer: {exc.strerror or exc}") from None


def _tls_handshake(raw: socket.socket, config: HubConfig, cert: Path, key: Path) -> str:
    broker = config.broker
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise _Failed(f"{cert} and {key} do not make a pair: {exc}") from None
    host = broker.host or ""
    with context.wrap_socket(raw, server_hostname=host) as tls:
        # With TLS 1.3 the broker judges the client certificate after the handshake: a
        # rejection arrives as an alert on the first read, an acceptance as silence
        # (the broker waits for CONNECT).
        tls.settimeout(1.0)
        try:
            closed = tls.recv(1) == b""
        except TimeoutError:
            closed = False
        if closed:
            raise _Failed(f"{host}: the broker closed the connection after the handshake")
    subject = _cn(cert)
    return f"{host}:{broker.effective_port} TLS handshake as {subject} accepted"


def _http(config: HubConfig) -> Check | str:
    http = config.http
    if http.listen is None:
        return Check("http", Status.OK, "not served (no http.listen)")
    host = http.listen.rpartition(":")[0].strip("[]")
    problem = http_problem(http)
    if problem:
        raise _Failed(problem)
    if http.cert_file is None or http.key_file is None:
        return f"{http.listen}, plain HTTP" + (" (insecure)" if not is_loopback(host) else "")
    _files_exist(("http.cert_file", http.cert_file), ("http.key_file", http.key_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(http.cert_file), str(http.key_file))
    except ssl.SSLError as exc:
        raise _Failed(f"{http.cert_file} and {http.key_file} do not make a pair: {exc}") from None
    cert = x509.load_pem_x509_certificate(Path(http.cert_file).read_bytes())
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _Failed(
            f"{http.cert_file} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    left = cert.not_valid_after_utc - now
    line = f"https://{http.listen}, certificate valid until {cert.not_valid_after_utc:%Y-%m-%d}"
    if left < timedelta(days=CERT_WARN_DAYS):
        return Check("http", Status.WARN, f"{line}: renew it within {left.days} days")
    return line


def _files_exist(*named: tuple[str, Path | None]) -> None:
    """A missing file is named with its setting, not reported as a TLS failure."""
    missing = [f"{setting} {path}" for setting, path in named if path and not path.exists()]
    if missing:
        raise _Failed(f"no such file: {', '.join(missing)}")


def _cn(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else "(no CN)"
