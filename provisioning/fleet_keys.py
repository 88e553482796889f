"""The fleet's public keys as the wire's `FleetKeys`, published with the registry.

The hub compares them with the keys it holds (``doorscan-hub check``): a hub without
the private half of the sealing key the units seal to, or without the card key the
fleet signs with, dead-letters those scans while the doors light green. Keys travel as
unpadded base64url of their 32 raw bytes (`doorscan.wire.raw_key_text`); a key is
shown to people by its first 16 characters, as the hub names it.

Use::

    keys = fleet_keys(home, datetime.now(UTC))     # -> FleetKeys
    public_key_text(signer.public_key)             # "3q2-7w..." (43 characters)
"""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from doorscan import sealing
from doorscan.wire import FleetKeys, raw_key_text
from provisioning.fleet import FleetHome

__all__ = ["fleet_keys", "public_key_text"]


def public_key_text(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """A card-signing or sealing public key as `FleetKeys` carries it (43 characters)."""
    return raw_key_text(key.public_bytes_raw())


def fleet_keys(home: FleetHome, at: datetime) -> FleetKeys:
    """The home's card-signing key and, if it has one, the hub's public sealing key.

    Only the current card key: the home keeps no key it replaced (`init --force`), so a
    hub still trusting an old one is not told about it here.
    """
    signer = home.signer()
    seal = (
        public_key_text(sealing.load_public_key(home.seal_public_path))
        if home.seal_public_path.exists()
        else None
    )
    return FleetKeys(
        issued_at=at,
        seal_public_key=seal,
        card_public_keys=[public_key_text(signer.public_key)],
    )
