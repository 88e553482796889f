"""Enrollment QRs: the fleet's enrollment key and the one-time codes it signs.

The key lives in the fleet home next to the card key, made on first use::

    keys/enroll-signing.pem       Ed25519 private key, mode 0600
    keys/enroll-signing.pub.pem   its public key: install it on every unit before it
                                  leaves for the field (the bootstrap's `enroll_keys`)

It is a key of its own, not the card key: the card key's public half is on every unit
and in every venue's hands, and a leak of the card key must not let anyone mint units.

Use::

    issued = issue_enrollment(home, "bv-gia-lai")          # 15 minutes, one venue
    print(qr_terminal(issued.text)); save_qr_png(issued.text, Path("qr.png"))
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import segno

from doorscan.atomicfile import write_atomic
from doorscan.enrollment import EnrollmentSigner, EnrollmentToken, parse_enrollment
from provisioning.fleet import FleetHome, InvalidInput, ProvisioningError, UnknownVenue

__all__ = [
    "DEFAULT_TTL",
    "MIN_TTL",
    "MAX_TTL",
    "IssuedEnrollment",
    "enroll_key_paths",
    "enrollment_signer",
    "issue_enrollment",
    "qr_terminal",
    "save_qr_png",
]

DEFAULT_TTL = timedelta(minutes=15)
# Under a minute a technician cannot walk from the laptop to the unit; over a day the
# QR outlives the visit it was printed for and is one more thing to photograph.
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(hours=24)
PNG_SCALE = 8
QUIET_ZONE_MODULES = 4


@dataclass(frozen=True)
class IssuedEnrollment:
    """A freshly signed enrollment QR: its text and what it says."""

    text: str
    token: EnrollmentToken


def enroll_key_paths(home: FleetHome) -> tuple[Path, Path]:
    """(private, public) paths of the fleet's enrollment key."""
    return home.keys_dir / "enroll-signing.pem", home.keys_dir / "enroll-signing.pub.pem"


def enrollment_signer(home: FleetHome) -> EnrollmentSigner:
    """The fleet's enrollment key, made (0600) the first time it is asked for."""
    home.require()
    private_path, public_path = enroll_key_paths(home)
    if not private_path.exists():
        signer = EnrollmentSigner.generate()
        home.keys_dir.mkdir(mode=0o700, exist_ok=True)
        # Private first: a crash in between leaves a key without a public file (rewritten
        # below on the next use), never a public key whose private half is lost.
        write_atomic(private_path, signer.private_pem(), mode=0o600)
    try:
        signer = EnrollmentSigner.from_pem_file(private_path)
    except ValueError as exc:
        raise ProvisioningError(str(exc)) from None
    if not public_path.exists() or public_path.read_bytes() != signer.public_pem():
        write_atomic(public_path, signer.public_pem(), mode=0o644)
    return signer


def issue_enrollment(
    home: FleetHome,
    venue_id: str,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> IssuedEnrollment:
    """Sign a one-time enrollment QR for a registered venue, valid for `ttl` from `now`."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInput("--ttl-minutes: an enrollment code lives from 1 minute to 24 hours")
    with home.registry() as registry:
        if registry.venue(venue_id) is None:
            raise UnknownVenue(
                f"venue {venue_id!r} is not registered; add it first with "
                f"`add-venue --id {venue_id} --name NAME`"
            )
    signer = enrollment_signer(home)
    now = now if now is not None else datetime.now(UTC)
    text = signer.issue(venue_id, now + ttl)
    # Parsing our own output checks the signer and gives the expiry as the unit reads it.
    return IssuedEnrollment(text, parse_enrollment(text, signer.keyring(), now))


def _qr(text: str) -> segno.QRCode:
    # encoding= keeps segno from choosing Latin-1; error M survives a glossy screen.
    return segno.make(text, error="m", encoding="utf-8", micro=False)


def qr_terminal(text: str) -> str:
    """The QR as text for a terminal (two modules per character row)."""
    buffer = io.StringIO()
    _qr(text).terminal(out=buffer, compact=True, border=QUIET_ZONE_MODULES)
    return buffer.getvalue()


def save_qr_png(text: str, out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise InvalidInput(f"--out {out}: the enrollment QR is written as .png")
    buffer = io.BytesIO()
    _qr(text).save(buffer, kind="png", scale=PNG_SCALE, border=QUIET_ZONE_MODULES)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the picture is as good as the code until it is spent or expires.
    write_atomic(out, buffer.getvalue(), mode=0o600)
