"""Ed25519 keys by key id: what visitor cards and enrollment QR codes are signed with.

Both signed QR formats (`doorscan.cards`, `doorscan.enrollment`) name their key by a
short id in the text, so a verifier holds a keyring of trusted public keys and a key
can be replaced without invalidating what the old one signed. The two formats keep
separate keys (a card key cannot sign an enrollment); they share this code.

    >>> signer = Ed25519Signer.generate()
    >>> ring = Ed25519Keyring([signer.public_key])
    >>> ring.get(signer.key_id) is not None
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["Ed25519Keyring", "Ed25519Signer", "key_id_of"]


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Short stable id of a key (8 hex digits of the SHA-256 of the raw public key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:8]


class Ed25519Keyring:
    """Trusted public keys, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id_of(k): k for k in keys}

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> Self:
        keys = []
        for path in paths:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}: not an Ed25519 public key")
            keys.append(key)
        return cls(keys)

    def get(self, key_id: str) -> Ed25519PublicKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def public_keys(self) -> list[bytes]:
        """The trusted keys' raw 32 bytes each."""
        return [key.public_bytes_raw() for key in self._keys.values()]


class Ed25519Signer:
    """A private key, its id, and its PEM forms; subclasses add what they sign."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Self:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem_file(cls, path: Path) -> Self:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, body: bytes) -> bytes:
        return self._key.sign(body)
