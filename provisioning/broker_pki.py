"""Who may talk to the broker, and about what: the fleet's certificate authority and ACL.

Every MQTT client proves who it is with a TLS client certificate signed by the fleet's
own CA; Mosquitto takes the certificate's CN as the user name
(`use_identity_as_username`) and the ACL written here limits each name to its topics:

    a unit (CN = unit id)        writes  doorscan/v1/units/<own id>/scans and /status
                                 reads   doorscan/v1/units/<own id>/ack and /config,
                                         doorscan/v1/hub/status,
                                         doorscan/v1/registry/cards/revoked
    doorscan-hub                 reads   every unit's scans and status, the registry
    doorscan-hub-<n> (n=1..64)   writes  every unit's ack and config, hub/status (and a
                                         retained scans message, to clear it)
                                 (the workers of `hub serve --workers N`, one CN each)
    doorscan-hub-config          writes  every unit's config; reads their status
                                 (`doorscan-hub unit-config`, beside the running hub)
    doorscan-provisioning        writes  the registry (reads it back)

The CA lives in the fleet home next to the card-signing key::

    keys/ca.pem           the CA certificate (public; every client and the broker get a copy)
    keys/ca-key.pem       the CA's private key, mode 0600: whoever holds it can mint units
    keys/crl.pem          the revocation list, rewritten by `revoke`
    keys/issued.json      serial, CN and expiry of every certificate issued, for revoking

Use::

    pki = BrokerPKI(home.keys_dir)
    pki.ensure_ca()
    cert_pem, key_pem = pki.issue_client("bv-gia-lai-door-1")
    pki.revoke("bv-gia-lai-door-1")        # every certificate issued to that CN
    pki.issue_unit_for_key("bv-gia-lai-door-2", csr_public_key)  # field enrollment

Mosquitto 2.0 rereads `crlfile` on SIGHUP (`revoke --crl-to --reload-pid`), so a revoked
certificate cannot connect again; a session already open is not cut by the reload (the
hub refuses its scans, the unit being inactive). Keys are ECDSA P-256, which every
OpenSSL a Pi or a hub runs can use.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from doorscan.wire import MAX_MESSAGE_BYTES, TOPIC_ROOT
from doorscan.wire.limits import BROKER_MAX_INFLIGHT, BROKER_MAX_PACKET_BYTES
from provisioning.fleet import InvalidInput, ProvisioningError, write_atomic

__all__ = [
    "HUB_CN",
    "HUB_CONFIG_CN",
    "MAX_HUB_WORKERS",
    "PROVISIONING_CN",
    "BrokerPKI",
    "CertPair",
    "acl_text",
    "hub_worker_cn",
    "reserved_cn_reason",
    "mosquitto_conf_text",
    "write_private",
    "write_public",
]

HUB_CN = "doorscan-hub"
PROVISIONING_CN = "doorscan-provisioning"
HUB_CONFIG_CN = "doorscan-hub-config"
"""`doorscan-hub unit-config`'s own name: with the hub's certificate it would be named
doorscan-hub too (the broker makes the CN the client id) and take the running hub's
place on the broker."""
# `hub serve --workers N` allows 1..64 too (hub.cli_serve); the hub does not import this.
MAX_HUB_WORKERS = 64
CA_DAYS = 3650
CERT_DAYS = 825  # the longest leaf lifetime common TLS stacks still accept
# OpenSSL refuses every client while the CRL is past its next-update time, so a CRL
# that is never refreshed must not expire before the certificates it speaks for.
CRL_DAYS = CERT_DAYS

CertPair = tuple[bytes, bytes]  # (certificate PEM, private key PEM)


def hub_worker_cn(index: int) -> str:
    """The CN (so MQTT user and client id) of hub worker `index`, e.g. "doorscan-hub-2"."""
    if not 1 <= index <= MAX_HUB_WORKERS:
        raise InvalidInput(f"hub worker {index}: workers are numbered 1 to {MAX_HUB_WORKERS}")
    return f"{HUB_CN}-{index}"


def reserved_cn_reason(common_name: str) -> str | None:
    """Why no unit may take `common_name` as its id (a CN gets the ACL's rights for that
    name: the hub's, say), or None. The whole "doorscan-hub" prefix is kept, not just 64
    worker names, so no later hub role finds its name already taken by a unit."""
    if common_name.startswith(HUB_CN):
        return (
            f"{common_name!r} is reserved: names starting with {HUB_CN!r} belong to the hub "
            "and its workers; a unit cannot take that id"
        )
    if common_name == PROVISIONING_CN:
        return f"{common_name!r} is reserved for the provisioning tool; a unit cannot take it"
    return None


def _now() -> datetime:
    # Backdated a little so a unit whose clock runs a few minutes slow still accepts it.
    return datetime.now(UTC) - timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "doorscan"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class BrokerPKI:
    """The fleet's CA in `keys_dir`; issues, records and revokes certificates."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self.ca_path = self.keys_dir / "ca.pem"
        self.ca_key_path = self.keys_dir / "ca-key.pem"
        self.crl_path = self.keys_dir / "crl.pem"
        self.issued_path = self.keys_dir / "issued.json"

    def ensure_ca(self) -> bool:
        """Create the CA (and an empty CRL) unless it exists; True if it was created."""
        if self.ca_key_path.exists() and self.ca_path.exists():
            return False
        if self.ca_key_path.exists() or self.ca_path.exists():
            raise ProvisioningError(
                f"half a CA in {self.keys_dir}: one of ca.pem / ca-key.pem is missing"
            )
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = _new_key()
        start = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("doorscan fleet CA"))
            .issuer_name(_name("doorscan fleet CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash between the writes leaves no certificate without its key.
        write_atomic(self.ca_key_path, _key_pem(key), mode=0o600)
        write_atomic(self.ca_path, cert.public_bytes(serialization.Encoding.PEM))
        self.write_crl()
        return True

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.ca_path.exists():
            raise ProvisioningError(f"no CA in {self.keys_dir}; run `broker-files` first")
        cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisioningError(f"{self.ca_key_path} is not an EC private key")
        return cert, key

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def issue_server(self, hosts: Sequence[str]) -> CertPair:
        """The broker's certificate, valid for each host name or IP address in `hosts`."""
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        if not names:
            raise InvalidInput("the broker certificate needs at least one host name or address")
        key = _new_key()
        cert = self._issue(
            "doorscan-broker", ExtendedKeyUsageOID.SERVER_AUTH, names, key.public_key()
        )
        return cert, _key_pem(key)

    def issue_client(self, common_name: str, *, unit: bool = True) -> CertPair:
        """A client certificate; its CN becomes the MQTT user name the ACL checks.

        `unit=True` refuses the hub's, its workers' and provisioning's names
        (`reserved_cn_reason`), so a unit registered as "doorscan-hub-1" cannot be
        handed a hub worker's rights.
        """
        if unit and (reason := reserved_cn_reason(common_name)) is not None:
            raise InvalidInput(reason)
        key = _new_key()
        cert = self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], key.public_key())
        return cert, _key_pem(key)

    def issue_unit_for_key(self, common_name: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
        """A unit's client certificate (PEM) for a key the unit made and kept.

        Field enrollment (`provisioning.enroll_server`) passes the key of a checked CSR:
        the CA never sees the private half. Reserved names are refused as in `issue_client`.
        """
        if (reason := reserved_cn_reason(common_name)) is not None:
            raise InvalidInput(reason)
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise InvalidInput("a unit key must be EC P-256")
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], public_key)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName],
        public_key: ec.EllipticCurvePublicKey,
    ) -> bytes:
        ca_cert, ca_key = self._ca()
        start = _now()
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        cert = builder.sign(ca_key, hashes.SHA256())
        issued = self._issued()
        issued.append(
            {
                "serial": str(serial),
                "cn": common_name,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "revoked_at": None,
            }
        )
        self._save_issued(issued)
        return cert.public_bytes(serialization.Encoding.PEM)

    def revoke(self, common_name: str) -> int:
        """Revoke every live certificate issued to `common_name`, rewrite the CRL.

        Returns how many were newly revoked (0 if there were none or all already were).
        """
        issued = self._issued()
        count = 0
        for record in issued:
            if record["cn"] == common_name and record["revoked_at"] is None:
                record["revoked_at"] = datetime.now(UTC).isoformat()
                count += 1
        self._save_issued(issued)
        self.write_crl()
        return count

    def write_crl(self) -> bytes:
        """Write keys/crl.pem listing every revoked certificate; return its PEM."""
        ca_cert, ca_key = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(now + timedelta(days=CRL_DAYS))
        )
        for record in self._issued():
            serial, revoked_at = record["serial"], record["revoked_at"]
            if serial is not None and revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(serial))
                    .revocation_date(datetime.fromisoformat(revoked_at))
                    .build()
                )
        pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        write_atomic(self.crl_path, pem)
        return pem

    def _issued(self) -> list[dict[str, str | None]]:
        try:
            data = json.loads(self.issued_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as exc:
            raise ProvisioningError(f"{self.issued_path}: {exc}") from None
        if not isinstance(data, list):
            raise ProvisioningError(f"{self.issued_path} is not a list of certificates")
        return data

    def _save_issued(self, issued: list[dict[str, str | None]]) -> None:
        text = json.dumps(issued, indent=1) + "\n"
        write_atomic(self.issued_path, text.encode("utf-8"), mode=0o600)


# The hub's rights, written once and given to the hub and to each of its workers: a
# worker is the hub, one share of it, and must never be able to do more or less.
# `readwrite` on scans: the hub clears a batch a unit wrongly published retained (an
# empty retained message), or it would come back at every subscribe.
_HUB_RULES = (
    ("readwrite", f"{TOPIC_ROOT}/units/+/scans"),
    ("read", f"{TOPIC_ROOT}/units/+/status"),
    ("write", f"{TOPIC_ROOT}/units/+/ack"),
    ("write", f"{TOPIC_ROOT}/units/+/config"),
    ("read", f"{TOPIC_ROOT}/registry/#"),
    ("readwrite", f"{TOPIC_ROOT}/hub/status"),
)


def acl_text(hub_workers: int = 0) -> str:
    """Mosquitto `acl_file` contents (Mosquitto 2.0 syntax, see mosquitto.conf(5)).

    `hub_workers` adds users doorscan-hub-1 .. -N with the hub's rights. Only workers
    whose certificates are issued are named: a user nobody can present is harmless but
    tells whoever reads the file in an incident that the fleet has workers it has not.
    """
    units = f"{TOPIC_ROOT}/units"
    hubs = [HUB_CN, *(hub_worker_cn(n) for n in range(1, hub_workers + 1))]
    # Mosquitto's acl_file has no groups: each user needs its own block of lines.
    hub_blocks = "".join(
        f"\nuser {user}\n" + "".join(f"topic {access} {topic}\n" for access, topic in _HUB_RULES)
        for user in hubs
    )
    config_block = (
        f"\nuser {HUB_CONFIG_CN}\n"
        f"topic write {TOPIC_ROOT}/units/+/config\n"
        f"topic read {TOPIC_ROOT}/units/+/status\n"
    )
    return (
        "# doorscan broker ACL, written by `provisioning broker-files`.\n"
        "# User names are client-certificate CNs (use_identity_as_username).\n"
        "# No top-level `topic` lines: a client with no user name gets nothing.\n"
        "\n"
        "# Every unit: only its own topics (%u = its CN = its unit id).\n"
        f"pattern write {units}/%u/scans\n"
        f"pattern write {units}/%u/status\n"
        f"pattern read {units}/%u/ack\n"
        "# its own retained config from the hub\n"
        f"pattern read {units}/%u/config\n"
        "# every client: the hub's retained status (which revision of the contract it reads)\n"
        f"pattern read {TOPIC_ROOT}/hub/status\n"
        "# every client: the fleet's retained list of revoked visitor cards\n"
        f"pattern read {TOPIC_ROOT}/registry/cards/revoked\n"
        f"{hub_blocks}"
        f"{config_block}"
        "\n"
        f"user {PROVISIONING_CN}\n"
        f"topic readwrite {TOPIC_ROOT}/registry/#\n"
    )


def mosquitto_conf_text(port: int, files_dir: Path, bind_address: str | None = None) -> str:
    """A mosquitto.conf fragment: one TLS listener that admits only fleet certificates.

    `files_dir` is where the broker will find ca.pem, crl.pem, broker-cert.pem,
    broker-key.pem and acl (absolute, as Mosquitto resolves relative paths from its
    working directory, not from the config file).
    """
    where = files_dir.resolve()
    listener = f"listener {port}" + (f" {bind_address}" if bind_address else "")
    return (
        "# doorscan TLS listener, written by `provisioning broker-files`.\n"
        f"{listener}\n"
        f"cafile {where / 'ca.pem'}\n"
        f"certfile {where / 'broker-cert.pem'}\n"
        f"keyfile {where / 'broker-key.pem'}\n"
        f"crlfile {where / 'crl.pem'}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        # The client id is the CN too: otherwise a unit could connect as "doorscan-hub"
        # or as another unit's id and take over (disconnect) that client's session.
        "use_username_as_clientid true\n"
        "allow_anonymous false\n"
        f"acl_file {where / 'acl'}\n"
        "# Both global: no payload over the wire contract's limit is forwarded, and a\n"
        "# client sending a packet much larger is cut off before the broker reads it all.\n"
        f"message_size_limit {MAX_MESSAGE_BYTES}\n"
        f"max_packet_size {BROKER_MAX_PACKET_BYTES}\n"
        "# Unacked QoS 1 messages per client (default 20): the hub acks what arrives\n"
        "# together after one commit, so a wider window lets it store more per commit.\n"
        f"max_inflight_messages {BROKER_MAX_INFLIGHT}\n"
    )


def write_private(path: Path, data: bytes) -> None:
    """A private key file, mode 0600 from the moment it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o644)
