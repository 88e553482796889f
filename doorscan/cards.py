"""Signed visitor cards: a QR for people with neither a phone nor a chip ID card.

`provisioning card` prints one; every door unit (and the hub) verifies it with the
fleet's card public key. The QR text is::

    DSC2|<key id>|<card id>|<name>|<issued YYYYMMDD>|<expires YYYYMMDD>|<signature>

The signature is Ed25519 over the UTF-8 bytes of everything before it, the last
`|` included, in unpadded base64url (86 characters). The key id is the first 8
hex digits of the SHA-256 of the raw public key, so keys can be rotated while old
cards stay valid. A card carries only a name: contact details stay with whoever
issued it, not in a QR anyone can photograph.

A card is refused after its expiry date (``card_expired``; the last valid day is the
one printed) and once its id is on the fleet's revocation list (``card_revoked``, from
the day it was revoked), which provisioning publishes retained on the broker
(`doorscan.wire.CardRevocations`) and every unit and the hub keep in their `CardKeyring`.
Cards of the first format, ``DSC1|<key id>|<card id>|<name>|<issued>|<signature>``,
carry no expiry: they count as expiring `LEGACY_VALID_DAYS` after issue.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from doorscan.ed25519keys import Ed25519Keyring, Ed25519Signer, key_id_of
from doorscan.errors import Refusal

__all__ = [
    "CARD_PREFIX",
    "CARD_PREFIX_V1",
    "DEFAULT_VALID_DAYS",
    "LEGACY_VALID_DAYS",
    "MAX_VALID_DAYS",
    "CardKeyring",
    "CardSigner",
    "VisitorCard",
    "key_id_of",
    "parse_card",
]

CARD_PREFIX = "DSC2|"
CARD_PREFIX_V1 = "DSC1|"
DEFAULT_VALID_DAYS = 365
"""A year: a visitor card is for people who come often, and is re-issued at the desk."""
LEGACY_VALID_DAYS = 365
"""A first-format card (no expiry in it) expires this long after it was issued."""
MAX_VALID_DAYS = 5 * 366
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
    expires: date


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
    """The public keys a unit or the hub trusts for visitor cards, and the revoked cards.

    The revocation list is replaced whole (`set_revoked`) when a newer list arrives; the
    scanner reads it from another thread, so the swap is one assignment under a lock.
    """

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        super().__init__(keys)
        self._revoked: Mapping[str, date] = {}
        self._revoked_lock = threading.Lock()

    def set_revoked(self, revoked: Mapping[str, date]) -> None:
        """Card id -> the day it was revoked (Vietnam day): scans from that day are refused."""
        with self._revoked_lock:
            self._revoked = dict(revoked)

    def revoked_on(self, card_id: str) -> date | None:
        with self._revoked_lock:
            return self._revoked.get(card_id)

    @property
    def revoked_count(self) -> int:
        with self._revoked_lock:
            return len(self._revoked)


class CardSigner(Ed25519Signer):
    """Issues cards; lives with provisioning, never on a door unit."""

    @staticmethod
    def check_name(name: str) -> str:
        """The name as a card will carry it (NFC, trimmed); `Refusal` if it cannot."""
        return _check_name(name)

    def keyring(self) -> CardKeyring:
        return CardKeyring([self.public_key])

    def issue(
        self,
        name: str,
        issued: date,
        card_id: str | None = None,
        *,
        expires: date | None = None,
    ) -> str:
        """Return the QR text of a new card for `name`, valid through `expires`
        (default `DEFAULT_VALID_DAYS` after `issued`)."""
        name = _check_name(name)
        if card_id is None:
            card_id = "".join(secrets.choice(_CARD_ID_ALPHABET) for _ in range(10))
        if not _CARD_ID_RE.fullmatch(card_id):
            raise ValueError(f"card id {card_id!r} is not 10 Crockford base32 characters")
        expires = expires or issued + timedelta(days=DEFAULT_VALID_DAYS)
        if not issued <= expires <= issued + timedelta(days=MAX_VALID_DAYS):
            raise ValueError(f"a card expires between its issue and {MAX_VALID_DAYS} days later")
        body = f"{CARD_PREFIX}{self.key_id}|{card_id}|{name}|{issued:%Y%m%d}|{expires:%Y%m%d}|"
        signature = self.sign(body.encode("utf-8"))
        return body + base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")


def _date(text: str, what: str) -> date:
    try:
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise Refusal("card_format", f"the card's {what} is not a date") from None


def parse_card(text: str, keyring: CardKeyring | None, today: date | None = None) -> VisitorCard:
    """Verify a card's QR text; raise `Refusal` if it is malformed, unknown or altered, and,
    with `today` (the scan's Vietnam day), if it has expired or was revoked by then."""
    if text.startswith(CARD_PREFIX):
        field_count = 7
    elif text.startswith(CARD_PREFIX_V1):
        field_count = 6
    else:
        raise Refusal("card_format", "not a doorscan visitor card")
    if keyring is None or len(keyring) == 0:
        raise Refusal("card_no_key", "visitor cards are not accepted here (no card key set up)")
    fields = text.split("|")
    if len(fields) != field_count:
        raise Refusal("card_format", f"a visitor card has exactly {field_count} fields")
    key_id, card_id, name, issued_text = fields[1:5]
    signature_text = fields[-1]
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
    issued = _date(issued_text, "issue date")
    if field_count == 7:
        expires = _date(fields[5], "expiry date")
    else:
        expires = issued + timedelta(days=LEGACY_VALID_DAYS)
    if today is not None:
        if today > expires:
            raise Refusal("card_expired", f"the card expired on {expires:%d/%m/%Y}")
        revoked = keyring.revoked_on(card_id)
        if revoked is not None and today >= revoked:
            raise Refusal("card_revoked", f"the card was revoked on {revoked:%d/%m/%Y}")
    return VisitorCard(card_id=card_id, name=name, issued=issued, key_id=key_id, expires=expires)
