"""Signed visitor cards: a QR for people with neither a phone nor a chip ID card.

`provisioning card` prints one; every door unit (and the hub) verifies it with the
fleet's card public key. The QR text is::

    DSC1|<key id>|<card id>|<name>|<issued YYYYMMDD>|<signature>

The signature is Ed25519 over the UTF-8 bytes of everything before it, the last
`|` included, in unpadded base64url (86 characters). The key id is the first 8
hex digits of the SHA-256 of the raw public key, so keys can be rotated while old
cards stay valid. A card carries only a name: contact details stay with whoever
issued it, not in a QR anyone can photograph.
"""

from __future__ import annotations

import base64
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import date

from cryptography.exceptions import InvalidSignature

from doorscan.ed25519keys import Ed25519Keyring, Ed25519Signer, key_id_of
from doorscan.errors import Refusal

__all__ = [
    "CARD_PREFIX",
    "CardKeyring",
    "CardSigner",
    "VisitorCard",
    "key_id_of",
    "parse_card",
]

CARD_PREFIX = "DSC1|"
MAX_NAME_CHARS = 80
_CARD_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_CARD_ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{10}")
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{86}")


@dataclass(frozen=True)
class VisitorCard:
    """A verified card."""

    card_id: str
    name: str
    issued: date
    key_id: str


def _check_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise Refusal("card_name", "the card has no name")
    if len(name) > MAX_NAME_CHARS:
        raise Refusal("card_name", f"the name is longer than {MAX_NAME_CHARS} characters")
    if "|" in name or any(unicodedata.category(c)[0] == "C" for c in name):
        raise Refusal("card_name", "the name holds a separator or a control character")
    return name


class CardKeyring(Ed25519Keyring):
    """The public keys a unit or the hub trusts for visitor cards."""


class CardSigner(Ed25519Signer):
    """Issues cards; lives with provisioning, never on a door unit."""

    def keyring(self) -> CardKeyring:
        return CardKeyring([self.public_key])

    def issue(self, name: str, issued: date, card_id: str | None = None) -> str:
        """Return the QR text of a new card for `name`."""
        name = _check_name(name)
        if card_id is None:
            card_id = "".join(secrets.choice(_CARD_ID_ALPHABET) for _ in range(10))
        if not _CARD_ID_RE.fullmatch(card_id):
            raise ValueError(f"card id {card_id!r} is not 10 Crockford base32 characters")
        body = f"{CARD_PREFIX}{self.key_id}|{card_id}|{name}|{issued:%Y%m%d}|"
        signature = self.sign(body.encode("utf-8"))
        return body + base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")


def parse_card(text: str, keyring: CardKeyring | None) -> VisitorCard:
    """Verify a card's QR text; raise `Refusal` if it is malformed, unknown or altered."""
    if not text.startswith(CARD_PREFIX):
        raise Refusal("card_format", "not a doorscan visitor card")
    if keyring is None or len(keyring) == 0:
        raise Refusal("card_no_key", "visitor cards are not accepted here (no card key set up)")
    fields = text.split("|")
    if len(fields) != 6:
        raise Refusal("card_format", "a visitor card has exactly 6 fields")
    _, key_id, card_id, name, issued_text, signature_text = fields
    if not _KEY_ID_RE.fullmatch(key_id) or not _CARD_ID_RE.fullmatch(card_id):
        raise Refusal("card_format", "the card's key id or card id is malformed")
    if not _SIG_RE.fullmatch(signature_text):
        raise Refusal("card_signature", "the card's signature is malformed")
    public_key = keyring.get(key_id)
    if public_key is None:
        raise Refusal("card_unknown_key", "the card was signed by a key this unit does not trust")
    body = text[: len(text) - len(signature_text)]
    try:
        public_key.verify(base64.urlsafe_b64decode(signature_text + "=="), body.encode("utf-8"))
    except InvalidSignature:
        raise Refusal(
            "card_signature", "the card's signature does not match: altered or forged"
        ) from None
    # Checked after the signature so a forger learns nothing from the order of refusals.
    if name != _check_name(name):
        raise Refusal("card_name", "the card's name is not in normal form")
    try:
        if not re.fullmatch(r"\d{8}", issued_text):
            raise ValueError
        issued = date(int(issued_text[:4]), int(issued_text[4:6]), int(issued_text[6:]))
    except ValueError:
        raise Refusal("card_format", "the card's issue date is not a date") from None
    return VisitorCard(card_id=card_id, name=name, issued=issued, key_id=key_id)
