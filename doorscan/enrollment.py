"""Field enrollment: the signed one-time QR a technician shows a new unit, and the
HTTP exchange that follows. Imported by provisioning (which signs and serves) and by
the unit (which verifies and asks), like `doorscan.cards`.

The QR text is::

    DSE1|<key id>|<venue id>|<one-time code>|<expires, UTC epoch seconds>|<signature>

The signature is Ed25519 over the UTF-8 bytes of everything before it, the last `|`
included, in unpadded base64url (86 characters), made with the fleet's enrollment key
(not the card key: a leaked card key must not mint units). The key id is the first 8
hex digits of the SHA-256 of the raw public key (`doorscan.cards.key_id_of`). The
one-time code is 128 random bits in unpadded RFC 4648 base32 (26 characters); the
server keeps only its SHA-256 (`code_digest`), so its database cannot be replayed.

The unit verifies a token offline against the key it was installed with, so a QR of
another fleet, an altered one or an expired one is refused at the door before anything
is sent. The server checks it again, against its own clock, and spends the code.

The exchange (`ENROLL_PATH`, over TLS that the unit verifies with the fleet CA)::

    POST /v1/enroll  {"token": "DSE1|...", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}
    200              EnrollResponse: unit id, venue id, certificate, CA, config
    4xx              {"error": <code>, "reason": <for people>}

The unit's private key is in the CSR only as a signature: it never leaves the unit.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field

from doorscan.ed25519keys import Ed25519Keyring, Ed25519Signer
from doorscan.errors import Refusal
from doorscan.wire import ID_PATTERN

__all__ = [
    "ENROLL_PREFIX",
    "ENROLL_PATH",
    "MAX_REQUEST_BYTES",
    "MALFORMED",
    "FOREIGN",
    "ALTERED",
    "EXPIRED",
    "EnrollmentToken",
    "EnrollmentKeyring",
    "EnrollmentSigner",
    "EnrollRequest",
    "UnitSettings",
    "EnrollResponse",
    "ErrorResponse",
    "is_enrollment",
    "code_digest",
    "parse_enrollment",
]

ENROLL_PREFIX = "DSE1|"
ENROLL_PATH = "/v1/enroll"
# A P-256 CSR is under 1 KiB in PEM and a token under 200 bytes: 16 KiB is generous
# and still keeps a flood of large bodies from costing the server memory.
MAX_REQUEST_BYTES = 16 * 1024

# Refusal codes of a token, shared by the unit's log and the server's answers.
MALFORMED = "enroll_malformed"
FOREIGN = "enroll_foreign"  # signed by a key this side does not trust
ALTERED = "enroll_altered"  # the key is known, the signature does not match
EXPIRED = "enroll_expired"

_KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
_ID_RE = re.compile(ID_PATTERN)
_CODE_RE = re.compile(r"[A-Z2-7]{26}")
_EXPIRES_RE = re.compile(r"[1-9][0-9]{0,11}")
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{86}")


@dataclass(frozen=True)
class EnrollmentToken:
    """A verified enrollment QR. `code` is secret until spent: log `code_digest(code)`."""

    key_id: str
    venue_id: str
    code: str
    expires_at: datetime


def is_enrollment(text: str) -> bool:
    """Whether a decoded QR claims to be an enrollment token (not yet verified)."""
    return text.startswith(ENROLL_PREFIX)


def code_digest(code: str) -> str:
    """The SHA-256 hex of a one-time code: what the server stores and logs."""
    return hashlib.sha256(code.encode("ascii")).hexdigest()


class EnrollmentKeyring(Ed25519Keyring):
    """The enrollment public keys a unit (or the server) trusts, by key id."""


class EnrollmentSigner(Ed25519Signer):
    """Signs enrollment tokens; lives in the fleet home, never on a unit."""

    def keyring(self) -> EnrollmentKeyring:
        return EnrollmentKeyring([self.public_key])

    def issue(self, venue_id: str, expires_at: datetime, code: str | None = None) -> str:
        """The QR text of a new token for `venue_id`, valid until `expires_at`."""
        if not _ID_RE.fullmatch(venue_id):
            raise ValueError(f"venue id {venue_id!r} is not a doorscan id")
        if code is None:
            code = base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        if not _CODE_RE.fullmatch(code):
            raise ValueError("a one-time code is 26 base32 characters")
        expires = int(expires_at.astimezone(UTC).timestamp())
        body = f"{ENROLL_PREFIX}{self.key_id}|{venue_id}|{code}|{expires}|"
        signature = self._key.sign(body.encode("utf-8"))
        return body + base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")


def parse_enrollment(text: str, keyring: EnrollmentKeyring, now: datetime) -> EnrollmentToken:
    """Verify an enrollment QR at time `now`; raise `Refusal` (MALFORMED, FOREIGN,
    ALTERED or EXPIRED) if it must not be used.

    The signature is checked before the expiry, so an altered expiry reads as altered.
    """
    if not is_enrollment(text):
        raise Refusal(MALFORMED, "not a doorscan enrollment code")
    fields = text.split("|")
    if len(fields) != 6:
        raise Refusal(MALFORMED, "an enrollment code has exactly 6 fields")
    _, key_id, venue_id, code, expires_text, signature_text = fields
    if not (
        _KEY_ID_RE.fullmatch(key_id)
        and _ID_RE.fullmatch(venue_id)
        and _CODE_RE.fullmatch(code)
        and _EXPIRES_RE.fullmatch(expires_text)
        and _SIG_RE.fullmatch(signature_text)
    ):
        raise Refusal(MALFORMED, "a field of the enrollment code is malformed")
    public_key = keyring.get(key_id)
    if public_key is None:
        raise Refusal(FOREIGN, f"signed by key {key_id}, which this fleet does not know")
    body = text[: len(text) - len(signature_text)]
    try:
        public_key.verify(base64.urlsafe_b64decode(signature_text + "=="), body.encode("utf-8"))
    except InvalidSignature:
        raise Refusal(ALTERED, "the signature does not match: altered or forged") from None
    expires_at = datetime.fromtimestamp(int(expires_text), UTC)
    if now >= expires_at:
        raise Refusal(EXPIRED, f"the code expired at {expires_at:%Y-%m-%d %H:%M:%S}Z")
    return EnrollmentToken(key_id=key_id, venue_id=venue_id, code=code, expires_at=expires_at)


# -- the HTTP exchange ------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollRequest(_Strict):
    """What the unit posts: the QR text as read, and a PEM CSR with CN = its unit id."""

    token: str = Field(max_length=512)
    csr: str = Field(max_length=8192)


class UnitSettings(_Strict):
    """What a TLS unit needs besides its certificate, as the fleet has it now."""

    broker_host: str = Field(description="MQTT broker (TLS listener) the unit sends to")
    broker_port: int = Field(ge=1, le=65535)
    card_keys: dict[str, str] = Field(description="card public keys (PEM) by key id")
    seal_public_key: str | None = Field(None, description="the hub's sealing public key, PEM")


class EnrollResponse(_Strict):
    unit_id: str = Field(pattern=f"^{ID_PATTERN}$")
    venue_id: str = Field(pattern=f"^{ID_PATTERN}$")
    certificate: str = Field(description="the unit's client certificate, PEM")
    ca: str = Field(description="the fleet CA certificate, PEM")
    config: UnitSettings


class ErrorResponse(_Strict):
    error: str
    reason: str
