"""The enrollment server: turns a unit's one-time QR and CSR into a registered unit
with a client certificate. `python -m provisioning enroll-server` runs it, on the HTTPS
transport of `provisioning.enroll_http`.

One endpoint, ``POST /v1/enroll`` (see `doorscan.enrollment` for the exchange), over
TLS with a certificate from the fleet CA, which every unit is installed with. A request
is decided in this order, and the first failure answers with ``{"error", "reason"}``:

1. the body: at most `MAX_REQUEST_BYTES`, JSON, exactly ``token`` and ``csr`` (400/413);
2. the token: well formed, signed by this fleet's enrollment key, not expired by the
   server's clock (400 malformed, 403 foreign / altered, 410 expired);
3. the CSR: its signature, an EC P-256 key, a CN that is a valid unit id and not one of
   the reserved names (400, 403);
4. the registry: the venue is still registered (404), the unit id is not taken (409);
5. the code: its SHA-256 is inserted into ``enrollments.db`` (PRIMARY KEY) in one
   SQLite write transaction with the issuing and registration, so of two racing
   requests with the same code exactly one wins and the other gets 409 ``code_used``.
   A failure after the insert rolls it back, so a crash does not burn the code.

Checks 1-4 spend nothing: a technician who typed a taken unit id can try again with
the same QR. The server keeps the code's digest, never the code, and logs a short
prefix of the digest to match log lines with the QR the technician printed.

Not promised: the registry is the fleet home's TinyDB file, written by one process at
a time; run one enroll-server per home and no other provisioning command alongside.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from doorscan import enrollment as contract
from doorscan.enrollment import EnrollmentKeyring, EnrollRequest, EnrollResponse, UnitSettings
from doorscan.errors import Refusal
from doorscan.wire import ID_PATTERN, UnitRecord, VenueRecord
from provisioning.broker_pki import BrokerPKI, reserved_cn_reason
from provisioning.enroll import enrollment_signer
from provisioning.fleet import FleetHome, describe_validation_error

__all__ = [
    "EnrollRefused",
    "CodeLedger",
    "EnrollmentService",
    "Publisher",
]

log = logging.getLogger(__name__)

Publisher = Callable[[VenueRecord, UnitRecord], None]
Clock = Callable[[], datetime]
_ID_RE = re.compile(ID_PATTERN)

_TOKEN_STATUS = {
    contract.MALFORMED: 400,
    contract.FOREIGN: 403,
    contract.ALTERED: 403,
    contract.EXPIRED: 410,
}


class EnrollRefused(Refusal):
    """An enrollment request was refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.status = status


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CodeLedger:
    """The spent one-time codes, by digest, in SQLite (durable across restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with contextlib.closing(self._connect()) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS spent_codes ("
                " code_sha256 TEXT PRIMARY KEY,"
                " venue_id TEXT NOT NULL,"
                " unit_id TEXT NOT NULL,"
                " spent_at TEXT NOT NULL)"
            )
        self.path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE, which
        # takes the write lock at once, so a second server on the same file waits.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextlib.contextmanager
    def spend(self, digest: str, venue_id: str, unit_id: str, now: datetime) -> Iterator[None]:
        """Record `digest` as spent, commit when the block succeeds, roll back if it raises.

        Raises `EnrollRefused` (409 code_used) when the code was spent before.
        """
        with contextlib.closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                try:
                    db.execute(
                        "INSERT INTO spent_codes VALUES (?, ?, ?, ?)",
                        (digest, venue_id, unit_id, now.isoformat()),
                    )
                except sqlite3.IntegrityError:
                    raise EnrollRefused(
                        409, "code_used", "this enrollment code was already used"
                    ) from None
                yield
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def spent_count(self) -> int:
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT count(*) FROM spent_codes").fetchone()
        return int(row[0])


def _unit_id_of(csr_pem: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    """The CSR's CN and key, after checking its signature, curve and name."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise EnrollRefused(
            400, "csr_malformed", "the CSR is not a PEM certificate request"
        ) from None
    if not signature_ok:
        raise EnrollRefused(400, "csr_signature", "the CSR's signature does not match its key")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise EnrollRefused(400, "csr_key", "the unit's key must be EC P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise EnrollRefused(400, "csr_name", "the CSR must carry exactly one CN, the unit id")
    unit_id = names[0].value
    if not _ID_RE.fullmatch(unit_id):
        raise EnrollRefused(400, "csr_name", "the CSR's CN is not a valid unit id")
    if (reason := reserved_cn_reason(unit_id)) is not None:
        raise EnrollRefused(403, "unit_reserved", reason)
    return unit_id, public_key


class EnrollmentService:
    """The decisions of the server, without HTTP: `handle(body)` -> (status, JSON).

    `broker_host`/`broker_port` are what enrolled units are told to connect to (the
    broker's TLS listener). `publish` (optional) sends the new unit's record to the
    broker; a failure there is logged, not answered: the unit is enrolled either way
    and `provisioning publish` catches up.
    """

    def __init__(
        self,
        home: FleetHome,
        broker_host: str,
        broker_port: int,
        *,
        clock: Clock = _utc_now,
        publish: Publisher | None = None,
    ) -> None:
        home.require()
        self._home = home
        self._broker = (broker_host, broker_port)
        self._clock = clock
        self._publish = publish
        self._pki = BrokerPKI(home.keys_dir)
        self._pki.ensure_ca()
        self._keyring: EnrollmentKeyring = enrollment_signer(home).keyring()
        self.ledger = CodeLedger(home.root / "enrollments.db")
        # The registry is a JSON file with one writer at a time: decisions are serial.
        self._lock = threading.Lock()

    def handle(self, body: bytes, client: str = "-") -> tuple[int, dict[str, Any]]:
        """Decide one request; never raises for anything the client sent."""
        try:
            response = self.enroll(body, client)
        except EnrollRefused as refused:
            return refused.status, {"error": refused.code, "reason": refused.reason}
        return 200, response.model_dump(mode="json")

    def enroll(self, body: bytes, client: str = "-") -> EnrollResponse:
        request = self._request(body)
        now = self._clock()
        try:
            token = contract.parse_enrollment(request.token, self._keyring, now)
        except Refusal as refusal:
            log.warning("enrollment from %s refused: %s", client, refusal)
            raise EnrollRefused(
                _TOKEN_STATUS.get(refusal.code, 400), refusal.code, refusal.reason
            ) from None
        digest = contract.code_digest(token.code)
        unit_id, public_key = _unit_id_of(request.csr)
        try:
            response = self._decide(token.venue_id, unit_id, public_key, digest, now)
        except EnrollRefused as refused:
            log.warning(
                "enrollment of %s at %s (code %.12s) from %s refused: %s",
                unit_id,
                token.venue_id,
                digest,
                client,
                refused,
            )
            raise
        log.info(
            "enrolled unit %s at %s (code %.12s) from %s", unit_id, token.venue_id, digest, client
        )
        return response

    def _request(self, body: bytes) -> EnrollRequest:
        if len(body) > contract.MAX_REQUEST_BYTES:
            raise EnrollRefused(413, "too_large", "the request body is too large")
        try:
            return EnrollRequest.model_validate_json(body)
        except ValidationError as exc:
            reason = describe_validation_error(exc)
            raise EnrollRefused(
                400, "bad_request", f"expected JSON token and csr: {reason}"
            ) from None

    def _decide(
        self,
        venue_id: str,
        unit_id: str,
        public_key: ec.EllipticCurvePublicKey,
        digest: str,
        now: datetime,
    ) -> EnrollResponse:
        with self._lock, self._home.registry() as registry:
            venue = registry.venue(venue_id)
            if venue is None:
                raise EnrollRefused(404, "venue_unknown", f"venue {venue_id!r} is not registered")
            if registry.unit(unit_id) is not None:
                raise EnrollRefused(409, "unit_exists", f"unit {unit_id!r} is already registered")
            unit = UnitRecord(unit_id=unit_id, venue_id=venue_id, active=True)
            with self.ledger.spend(digest, venue_id, unit_id, now):
                certificate = self._pki.issue_unit_for_key(unit_id, public_key)
                unit = registry.put_unit(unit)
        if self._publish is not None:
            try:
                self._publish(venue, unit)
            except Exception as exc:  # a broker outage must not undo a finished enrollment
                log.error(
                    "unit %s is enrolled but publishing it failed (%s); run `publish` later",
                    unit_id,
                    exc,
                )
        return EnrollResponse(
            unit_id=unit_id,
            venue_id=venue_id,
            certificate=certificate.decode("ascii"),
            ca=self._pki.ca_pem().decode("ascii"),
            config=self._unit_settings(),
        )

    def _unit_settings(self) -> UnitSettings:
        signer = self._home.signer()
        seal = self._home.seal_public_path
        return UnitSettings(
            broker_host=self._broker[0],
            broker_port=self._broker[1],
            card_keys={signer.key_id: signer.public_pem().decode("ascii")},
            seal_public_key=seal.read_text(encoding="ascii") if seal.exists() else None,
        )
