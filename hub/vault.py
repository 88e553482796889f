"""The hub's vault: one secret that encrypts identities at rest and blinds person keys.

The hub stores who went where. Whoever copies ``hub.db`` (a backup, a stolen disk, an
operator with shell access but no key file) must not read who; the hub itself, holding
the key file, still matches people and answers traces. One 32-byte secret, kept in a
file apart from the database, gives two keys (HKDF-SHA256, one per purpose, so that
neither use can leak into the other; a third and a fourth key check the file's key
and tell a resent scan from another one under the same id, `content_digest`):

* the **match key**: `blind` turns a person key (``id:064090123456``) into a
  pseudonym ``pk1:...`` (HMAC-SHA256). It is deterministic, so the store indexes it
  and a trace is still an index range scan; without the key, a 12-digit CCCD number
  cannot be guessed from it by trying every number, as an unkeyed hash would allow;
* the **seal key**: `seal` / `open` encrypt a row's identity (person key, kind, ID
  number, name, birth date, sex, address) with XChaCha20-Poly1305 under a random
  nonce. The row's own id is the associated data, so a ciphertext copied into another
  row does not open there.

What stays in the clear, on purpose: venue ids, unit ids, scan ids, times, the code's
kind (cccd, health, card) and the clock flag. Reports and traces range-scan on them;
they say where and when something happened, not who. The audit log records a traced
person by pseudonym: someone with the vault can check whether an ID was traced by
blinding it; an admin reading the log sees no identity.

Promises and limits:

* The database remembers a check value of the vault (`check_value`): opening it with
  another key is refused, never half-read.
* Losing the key file loses every identity in the database; back it up apart from the
  database (a backup of both in one place protects nothing).
* Key rotation is not implemented: changing the key means re-encrypting every row.
* The hub process holds the key while it runs: root on the hub reads everything.

    >>> vault = Vault.generate()
    >>> vault.blind("id:064090123456") == vault.blind("id:064090123456")
    True
    >>> vault.open(vault.seal(b"Nguyen Van An", b"scan:1"), b"scan:1")
    b'Nguyen Van An'

The key file (`save`, `load`) is two lines, a version line and the key in base64,
created with mode 0600; a file that others may read is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from doorscan.errors import ConfigError, DoorscanError

__all__ = [
    "ENV_VAULT_KEY",
    "KEY_BYTES",
    "PSEUDONYM_PREFIX",
    "SealedDataError",
    "Vault",
    "VaultKeyError",
]

KEY_BYTES = 32
ENV_VAULT_KEY = "DOORSCAN_HUB_VAULT_KEY"
"""The environment variable the hub's commands read when ``--vault-key`` is not given."""
PSEUDONYM_PREFIX = "pk1:"
"""Names the blinding scheme, so a later one can sit beside it during a migration."""

_FILE_HEADER = "doorscan-hub-vault v1"
_SEAL_VERSION = b"\x01"
_NONCE_BYTES = 24
_TAG_BYTES = 16


class VaultKeyError(ConfigError):
    """The vault key file is missing, malformed, or readable by others."""


class SealedDataError(DoorscanError, ValueError):
    """A ciphertext does not open: another key, damaged, or moved from another row."""


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=b"doorscan hub vault v1: " + purpose,
    ).derive(secret)


class Vault:
    """The hub's secret and what it does; see the module docstring."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise VaultKeyError(f"a vault key is {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = bytes(secret)
        self._seal_key = _subkey(secret, b"seal")
        self._match_key = _subkey(secret, b"match")
        self._check_key = _subkey(secret, b"check")
        self._content_key = _subkey(secret, b"content")

    def __repr__(self) -> str:
        return "Vault(<secret>)"  # never the key, not even in a traceback

    @classmethod
    def generate(cls) -> Vault:
        return cls(secrets.token_bytes(KEY_BYTES))

    # -- the key file ------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Vault:
        """Read a key file written by `save`; refuse one that group or others may read."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise VaultKeyError(
                f"no vault key at {path} (create one with `doorscan-hub init-vault FILE`)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise VaultKeyError(f"cannot read the vault key {path}: {exc}") from None
        if not stat.S_ISREG(mode):
            raise VaultKeyError(f"the vault key {path} is not a regular file")
        if mode & 0o077:
            raise VaultKeyError(
                f"the vault key {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                "run `chmod 600` on it"
            )
        lines = text.splitlines()
        if len(lines) != 2 or lines[0].strip() != _FILE_HEADER:
            raise VaultKeyError(f"{path} is not a doorscan hub vault key ({_FILE_HEADER!r})")
        try:
            secret = base64.b64decode(lines[1].strip(), validate=True)
        except binascii.Error:
            raise VaultKeyError(f"the vault key in {path} is not base64") from None
        if len(secret) != KEY_BYTES:
            raise VaultKeyError(f"the vault key in {path} is {len(secret)} bytes, not {KEY_BYTES}")
        return cls(secret)

    def save(self, path: str | Path) -> None:
        """Write the key file with mode 0600; never replace an existing file.

        The key is written to a temporary file in the same folder, made durable, then
        linked to its name: the name appears whole or not at all, and linking fails if
        the name exists, so a second `init-vault` cannot destroy the first key.
        """
        path = Path(path)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        body = f"{_FILE_HEADER}\n{base64.b64encode(self._secret).decode('ascii')}\n"
        # 0600 at creation: there is no moment when the key sits in a readable file.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                raise VaultKeyError(
                    f"{path} exists: refusing to overwrite a vault key "
                    "(the identities it encrypts would be lost)"
                ) from None
        finally:
            temp.unlink(missing_ok=True)
        directory = os.open(path.resolve().parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # -- matching and sealing ------------------------------------------------------------

    def blind(self, person_key: str) -> str:
        """The person key's pseudonym: the same key always gives the same pseudonym."""
        digest = hmac.digest(self._match_key, person_key.encode("utf-8"), "sha256")
        return PSEUDONYM_PREFIX + _base32_lower(digest)

    def content_digest(self, content: bytes) -> str:
        """A keyed digest that tells two contents apart (128 bits, hex).

        Keyed for the reason `blind` is: a scan's content is a QR text that someone who
        knows a person could guess, and an unkeyed hash would confirm the guess.
        """
        return hmac.new(self._content_key, content, hashlib.sha256).hexdigest()[:32]

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        """Encrypt `plain`, bound to `aad` (which is not stored: the reader supplies it)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(plain, aad, nonce, self._seal_key)
        return _SEAL_VERSION + nonce + bytes(sealed)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt what `seal` made with the same `aad`; raise `SealedDataError` otherwise."""
        blob = bytes(blob)
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[:1] != _SEAL_VERSION:
            raise SealedDataError("not a sealed value of a known version, or cut short")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return bytes(
                crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, self._seal_key)
            )
        except CryptoError:
            raise SealedDataError(
                "a sealed value does not open: another vault key, damaged, or moved from "
                "another row"
            ) from None

    def check_value(self) -> str:
        """A value the database keeps to recognise its key; it reveals nothing of the key."""
        return hmac.new(self._check_key, b"doorscan hub vault check", hashlib.sha256).hexdigest()


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648's alphabet, lower case
_BASE32_PAIRS = [_BASE32[i >> 5] + _BASE32[i & 31] for i in range(1024)]


def _base32_lower(digest: bytes) -> str:
    """``base64.b32encode(digest)`` without padding, lower case, for a 32-byte digest.

    The stdlib's encoder is pure Python and was most of a pseudonym's cost, which every
    stored scan pays twice: here the digest is one integer, read ten bits at a time.
    """
    # 256 bits and 4 zero bits of padding: 26 pairs of characters, 52 in all.
    number = int.from_bytes(digest, "big") << 4
    return "".join([_BASE32_PAIRS[(number >> shift) & 1023] for shift in range(250, -1, -10)])
