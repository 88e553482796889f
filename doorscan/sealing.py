"""Sealing a scan's QR text for the hub, so that a stolen door unit reveals no identity.

The hub holds an X25519 key pair (the "sealing key"); a unit holds only the public
half. Each text is sealed with libsodium's sealed box (PyNaCl `SealedBox`: a fresh
ephemeral X25519 key per message, XSalsa20-Poly1305), a published construction rather
than one of our own; `cryptography` only reads and writes the keys as PEM. Nothing on
the unit can open what it sealed.

    >>> private = generate_key()                                     # doctest: +SKIP
    >>> sealed = seal("064090123456|...", private.public_key())
    >>> open_sealed(sealed, private)
    '064090123456|...'

Wire format (base64url, no padding): ``version (1 byte) | sealed box`` where the sealed
box is ``ephemeral public key (32) | tag (16) | ciphertext``. The length of the text is not hidden.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from doorscan.errors import ConfigError, Refusal

__all__ = [
    "SEAL_OVERHEAD_BYTES",
    "SealingError",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "open_sealed",
    "private_pem",
    "public_pem",
    "save_private_key",
    "save_public_key",
    "seal",
    "sealed_length",
]

_VERSION = b"\x01"
# libsodium's sealed box: an ephemeral public key (32 bytes) and a Poly1305 tag (16).
SEAL_OVERHEAD_BYTES = 1 + 32 + 16


class SealingError(Refusal):
    """A sealed text that does not open: wrong key, damaged, or not a sealed text at all."""

    def __init__(self, reason: str) -> None:
        super().__init__("unsealable", reason)


def sealed_length(plain_bytes: int) -> int:
    """How many characters `seal` makes of a text of `plain_bytes` UTF-8 bytes."""
    raw = plain_bytes + SEAL_OVERHEAD_BYTES
    return (raw * 4 + 2) // 3


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def seal(text: str, public_key: X25519PublicKey) -> str:
    """Seal `text` so that only the holder of the matching private key can read it."""
    box = SealedBox(PublicKey(_raw_public(public_key)))
    sealed = box.encrypt(text.encode("utf-8"))
    return base64.urlsafe_b64encode(_VERSION + sealed).rstrip(b"=").decode()


def open_sealed(sealed: str, private_key: X25519PrivateKey) -> str:
    """The text inside `sealed`; raises `SealingError` if it does not open with this key."""
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    except (binascii.Error, ValueError):
        raise SealingError("the sealed text is not base64url") from None
    if len(raw) < SEAL_OVERHEAD_BYTES or raw[:1] != _VERSION:
        raise SealingError("the sealed text is too short or of an unknown version")
    try:
        plain = SealedBox(PrivateKey(_raw_private(private_key))).decrypt(raw[1:])
    except CryptoError:
        raise SealingError("the sealed text does not open with this hub's key") from None
    try:
        return bytes(plain).decode("utf-8")
    except UnicodeDecodeError:
        raise SealingError("the sealed text is not UTF-8 inside") from None


def generate_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_pem(key: X25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (keep it 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: X25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def save_private_key(key: X25519PrivateKey, path: Path) -> None:
    """Write the private key as PKCS#8 PEM, readable by its owner only (0600 from the start)."""
    pem = private_pem(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    Path(path).chmod(0o600)


def save_public_key(key: X25519PublicKey, path: Path) -> None:
    Path(path).write_bytes(public_pem(key))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the sealing key {path}: {exc}") from None


def load_private_key(path: Path) -> X25519PrivateKey:
    """Read the hub's private sealing key: PKCS#8 PEM, or the 32 raw bytes."""
    data = _read(path)
    try:
        if len(data) == 32:
            return X25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ConfigError(f"{path} is not an X25519 private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an X25519 private key")
    return key


def load_public_key(path: Path) -> X25519PublicKey:
    """Read the hub's public sealing key: PEM, or the 32 raw bytes."""
    data = _read(path)
    try:
        if len(data) == 32:
            return X25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not an X25519 public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an X25519 public key")
    return key
