"""The fleet home: card-signing keys, the registry of venues, units and cards, and the
files provisioning hands out (unit configs, printable visitor cards).

Layout of a home folder (``--home``, or ``$DOORSCAN_FLEET``, or ``./fleet``)::

    keys/card-signing.pem        Ed25519 private key, mode 0600, folder 0700
    keys/card-signing.pub.pem    its public key; copied next to every unit config
    keys/hub-seal.key            the hub's X25519 sealing key (`hub serve --seal-key`), 0600
    keys/hub-seal.pub            its public key; copied next to every unit config
    registry.json                TinyDB: tables venues, units, cards (mode 0600)
    broker.json                  where units and tools connect (`provisioning.broker_address`)
    units/<unit>.json            unit configs (`device.config.load_config` reads them)
    cards/<card id>.png          printable visitor cards

The registry holds the only copy of visitors' contact details (a card carries just a
name), so it is private to the technician's account like the key.

Every file is written atomically (temp file, fsync, rename, fsync of the folder): a
crash or a full disk leaves the old file or the new one, never half of one. This
tool assumes one technician at a time per home; two concurrent writers can lose an
update (last rename wins), but never corrupt the file.

Use::

    home = FleetHome.locate()                      # --home, $DOORSCAN_FLEET or ./fleet
    signer = home.init()                           # KeysExist if keys are already there
    with home.registry() as registry:
        registry.put_venue(VenueRecord(venue_id="bv-gia-lai", name="Bệnh viện Gia Lai"))
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

import segno
from pydantic import ValidationError
from tinydb import Query, TinyDB
from tinydb.storages import Storage

from device.config import UnitConfig
from doorscan import sealing
from doorscan.atomicfile import write_atomic
from doorscan.cards import CardSigner, parse_card
from doorscan.errors import DoorscanError
from doorscan.lifecycle import Closeable
from doorscan.wire import CardRevocations, RevokedCard, UnitRecord, VenueRecord

__all__ = [
    "ENV_HOME",
    "ProvisioningError",
    "FleetNotReady",
    "KeysExist",
    "UnknownVenue",
    "InvalidInput",
    "FleetHome",
    "IssuedCard",
    "Registry",
    "describe_validation_error",
    "record_fields",
    "write_atomic",
    "write_unit_config",
    "issue_card",
    "check_card_output",
    "render_card",
    "today_vn",
]

ENV_HOME = "DOORSCAN_FLEET"
CARD_SUFFIXES = (".png", ".pdf", ".svg")
MAX_CONTACT_CHARS = 300
# 10 px per module at 300 dpi is 0.85 mm: a version-8 card code (about 150 bytes of
# text) prints 4.8 cm wide with its 4-module quiet zone and reads from 30 cm away.
PNG_SCALE = 10
PNG_DPI = 300
SVG_MODULE_MM = 0.85
QUIET_ZONE_MODULES = 4


class ProvisioningError(DoorscanError):
    """Base of the errors the technicians' tool raises on purpose; the CLI prints them."""


class FleetNotReady(ProvisioningError, FileNotFoundError):
    """The home folder has no keys or no registry yet: run `init` first."""


class KeysExist(ProvisioningError, FileExistsError):
    """`init` would overwrite the card-signing keys (and so invalidate every card)."""


class UnknownVenue(ProvisioningError, LookupError):
    """A unit names a venue that is not registered."""


class InvalidInput(ProvisioningError, ValueError):
    """A venue, unit, card or config value is refused; the message names the field."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, `field: message`, for people rather than for pydantic."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


def today_vn() -> date:
    """Today in Vietnam (UTC+7, no daylight saving), the date printed on a card."""
    return (datetime.now(UTC) + timedelta(hours=7)).date()


class _AtomicJSONStorage(Storage):
    """TinyDB storage that rewrites the whole file atomically on every write.

    TinyDB's own JSONStorage truncates and rewrites the open file in place, so a crash
    mid-write loses the registry. Writes here are rare and the file is small, so the
    cost of a full rewrite plus two fsyncs is nothing.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProvisioningError(f"{self._path} is not a registry (bad JSON: {exc})") from None
        if not isinstance(data, dict):
            raise ProvisioningError(f"{self._path} is not a registry (not a JSON object)")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        write_atomic(self._path, text.encode("utf-8"), mode=0o600)


@dataclass(frozen=True)
class IssuedCard:
    """The registry's record of a visitor card; `contact` never leaves the registry."""

    card_id: str
    name: str
    contact: str
    issued: date
    key_id: str
    expires: date | None = None  # None: a first-format card (doorscan.cards.LEGACY_VALID_DAYS)
    revoked_on: date | None = None


class Registry(Closeable):
    """Venues, units and issued cards of one fleet. Open it with `FleetHome.registry()`."""

    def __init__(self, path: Path) -> None:
        self._db = TinyDB(path, storage=_AtomicJSONStorage)
        self._closed = False

    def put_venue(self, venue: VenueRecord) -> bool:
        """Add or update a venue; True if it is new."""
        return self._upsert("venues", "venue_id", venue.venue_id, record_fields(venue))

    def venue(self, venue_id: str) -> VenueRecord | None:
        doc = self._db.table("venues").get(Query().venue_id == venue_id)
        return VenueRecord.model_validate(dict(doc)) if isinstance(doc, dict) else None

    def venues(self) -> list[VenueRecord]:
        docs = self._db.table("venues").all()
        return sorted(
            (VenueRecord.model_validate(dict(d)) for d in docs), key=attrgetter("venue_id")
        )

    def put_unit(self, unit: UnitRecord) -> UnitRecord:
        """Add or update a unit and return it as registered. The venue must be registered.

        A unit's `registered_at` is set the first time it is put (now, unless the record
        carries one) and never moved by an update: the hub holds apart any scan the unit
        claims to have made before it (`hub.history`).
        """
        if self.venue(unit.venue_id) is None:
            raise UnknownVenue(
                f"venue {unit.venue_id!r} is not registered; add it first with "
                f"`add-venue --id {unit.venue_id} --name NAME`"
            )
        before = self.unit(unit.unit_id)
        registered = (before.registered_at if before else None) or unit.registered_at
        stored = unit.model_copy(update={"registered_at": registered or datetime.now(UTC)})
        self._upsert("units", "unit_id", unit.unit_id, record_fields(stored))
        return stored

    def unit(self, unit_id: str) -> UnitRecord | None:
        doc = self._db.table("units").get(Query().unit_id == unit_id)
        return UnitRecord.model_validate(dict(doc)) if isinstance(doc, dict) else None

    def units(self) -> list[UnitRecord]:
        docs = self._db.table("units").all()
        return sorted((UnitRecord.model_validate(dict(d)) for d in docs), key=attrgetter("unit_id"))

    def has_card(self, card_id: str) -> bool:
        return self._db.table("cards").contains(Query().card_id == card_id)

    def add_card(self, card: IssuedCard) -> None:
        if self.has_card(card.card_id):
            raise InvalidInput(f"card id {card.card_id} is already in the registry")
        self._db.table("cards").insert(_card_fields(card))

    def cards(self) -> list[IssuedCard]:
        """In the order they were issued."""
        # By document id: the file keeps ids as JSON keys, which read back "1", "10", "2"...
        docs = sorted(self._db.table("cards").all(), key=lambda doc: doc.doc_id)
        return [_card(doc) for doc in docs]

    def revoke_card(self, card_id: str, on: date, at: datetime) -> CardRevocations:
        """Mark a card revoked from the Vietnam day `on`; return the fleet's new list.

        The list's version goes up by one with each revocation, so units and the hub
        keep the newest. Revoking a card twice keeps its first day.
        """
        doc = self._db.table("cards").get(Query().card_id == card_id)
        if not isinstance(doc, dict):
            raise InvalidInput(f"no card {card_id!r} in the registry")
        card = _card(doc)
        if card.revoked_on is None:
            self._db.table("cards").update(
                {"revoked_on": on.isoformat()}, Query().card_id == card_id
            )
        version = int(self._meta("card_revocations_version", 0)) + 1
        self._set_meta("card_revocations_version", version)
        revocations = self.card_revocations(at)
        assert revocations is not None
        return revocations

    def card_revocations(self, at: datetime) -> CardRevocations | None:
        """The list to publish (retained), or None while no card was ever revoked."""
        version = int(self._meta("card_revocations_version", 0))
        if version == 0:
            return None
        revoked = [
            RevokedCard(card_id=c.card_id, revoked_on=c.revoked_on)
            for c in self.cards()
            if c.revoked_on is not None
        ]
        return CardRevocations(version=version, issued_at=at, revoked=revoked)

    def _meta(self, key: str, default: Any) -> Any:
        doc = self._db.table("meta").get(Query().key == key)
        return doc["value"] if isinstance(doc, dict) else default

    def _set_meta(self, key: str, value: Any) -> None:
        self._upsert("meta", "key", key, {"key": key, "value": value})

    def _upsert(self, table: str, key: str, value: str, fields: dict[str, Any]) -> bool:
        # Not TinyDB's upsert: for a new record it writes the file twice (update, insert).
        where = Query()[key] == value
        if self._db.table(table).contains(where):
            self._db.table(table).update(fields, where)
            return False
        self._db.table(table).insert(fields)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()


def _card_fields(card: IssuedCard) -> dict[str, Any]:
    return {
        name: value.isoformat() if isinstance(value, date) else value
        for name, value in asdict(card).items()
    }


def _card(doc: dict[str, Any]) -> IssuedCard:
    dates = {
        name: date.fromisoformat(doc[name]) if doc.get(name) else None
        for name in ("issued", "expires", "revoked_on")
    }
    return IssuedCard(**{**doc, **dates})


def record_fields(record: VenueRecord | UnitRecord) -> dict[str, Any]:
    # The registry keeps the record's own fields; version, revision and schema are the wire's.
    return record.model_dump(mode="json", exclude={"v", "rev", "schema_"}, exclude_none=True)


class FleetHome:
    """The paths of one fleet home, and the operations that create or read its keys."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.keys_dir = self.root / "keys"
        self.private_key_path = self.keys_dir / "card-signing.pem"
        self.public_key_path = self.keys_dir / "card-signing.pub.pem"
        self.seal_private_path = self.keys_dir / "hub-seal.key"
        self.seal_public_path = self.keys_dir / "hub-seal.pub"
        self.registry_path = self.root / "registry.json"
        self.units_dir = self.root / "units"
        self.cards_dir = self.root / "cards"

    @classmethod
    def locate(cls, home: Path | None = None) -> FleetHome:
        """`home` if given, else `$DOORSCAN_FLEET`, else `./fleet`."""
        return cls(home or Path(os.environ.get(ENV_HOME) or "fleet"))

    def init(self, *, force: bool = False) -> CardSigner:
        """Create the folders, a new key pair and (if missing) an empty registry.

        Raises `KeysExist` when a key is already there and `force` is false: a new
        key makes every card printed so far unreadable at units that get new configs.
        """
        existing = [p for p in (self.private_key_path, self.public_key_path) if p.exists()]
        if existing and not force:
            raise KeysExist(
                f"{existing[0]} already exists; a new key would invalidate every card "
                "issued with it. Use --force to replace the keys anyway."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        self.keys_dir.chmod(0o700)
        signer = CardSigner.generate()
        # Private key first: a crash between the two writes leaves a pair that
        # `signer()` reports as mismatched instead of a public key with no private one.
        write_atomic(self.private_key_path, signer.private_pem(), mode=0o600)
        write_atomic(self.public_key_path, signer.public_pem(), mode=0o644)
        self._write_seal_key()
        if not self.registry_path.exists():
            write_atomic(self.registry_path, b"{}\n", mode=0o600)
        return signer

    def init_seal_key(self) -> None:
        """Give a fleet home made before sealing existed the hub's sealing key pair.

        Refused when there is one: a new pair would leave every unit sealing for a key
        the hub no longer holds, and their scans would all be dead-lettered.
        """
        self.require()
        if self.seal_private_path.exists() or self.seal_public_path.exists():
            raise KeysExist(f"{self.seal_private_path} already exists; units seal for it, keep it")
        self._write_seal_key()

    def _write_seal_key(self) -> None:
        # Units seal scans for the hub with the public half; private half first, as above.
        seal_key = sealing.generate_key()
        write_atomic(self.seal_private_path, sealing.private_pem(seal_key), mode=0o600)
        write_atomic(self.seal_public_path, sealing.public_pem(seal_key.public_key()), mode=0o644)

    def require(self) -> None:
        """Raise `FleetNotReady` unless `init` has run here."""
        for path in (self.private_key_path, self.public_key_path, self.registry_path):
            if not path.exists():
                raise FleetNotReady(
                    f"no fleet at {self.root} ({path.name} is missing); "
                    f"run `python -m provisioning --home {self.root} init` first"
                )

    def signer(self) -> CardSigner:
        self.require()
        signer = CardSigner.from_pem_file(self.private_key_path)
        if signer.public_pem() != self.public_key_path.read_bytes():
            raise ProvisioningError(
                f"{self.public_key_path} does not belong to {self.private_key_path}; "
                "run `init --force` to make a new pair"
            )
        return signer

    def registry(self) -> Registry:
        self.require()
        return Registry(self.registry_path)


def write_unit_config(
    out_dir: Path, settings: dict[str, Any], signer: CardSigner, seal_pub: bytes | None = None
) -> tuple[UnitConfig, Path, Path]:
    """Validate `settings` as a `UnitConfig` and write it with a copy of the card key.

    The key file is named after its key id, so units provisioned before a key change
    keep pointing at the key they were given. `card_keys` is relative: `load_config`
    resolves it from the config's folder, so the folder can be copied to the unit whole.
    Returns the config (paths as written, not resolved), its path and the key's path.
    `seal_pub` (the hub's public sealing key, PEM) is copied as ``hub-seal.pub`` and set
    as `seal_key`, so the unit keeps no identity in the clear.
    """
    key_path = out_dir / f"card-signing-{signer.key_id}.pub.pem"
    seal_path = out_dir / "hub-seal.pub"
    if seal_pub is not None:
        settings = {**settings, "seal_key": seal_path.name}
    try:
        config = UnitConfig.model_validate({**settings, "card_keys": [key_path.name]})
    except ValidationError as exc:
        raise InvalidInput(f"unit config: {describe_validation_error(exc)}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(key_path, signer.public_pem())
    if seal_pub is not None:
        write_atomic(seal_path, seal_pub)
    config_path = out_dir / f"{config.unit_id}.json"
    # Only the keys set here are written; the unit's own defaults fill the rest, so a
    # config does not freeze today's defaults into every unit.
    text = json.dumps(config.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"
    write_atomic(config_path, text.encode("utf-8"))
    return config, config_path, key_path


def check_card_output(out: Path) -> None:
    if out.suffix.lower() not in CARD_SUFFIXES:
        raise InvalidInput(f"--out {out}: a card is written as .png, .pdf or .svg")


def _check_contact(contact: str) -> str:
    contact = unicodedata.normalize("NFC", contact).strip()
    if len(contact) > MAX_CONTACT_CHARS:
        raise InvalidInput(f"--contact: longer than {MAX_CONTACT_CHARS} characters")
    if any(unicodedata.category(c)[0] == "C" for c in contact):
        raise InvalidInput("--contact: holds a control character")
    return contact


def issue_card(
    signer: CardSigner,
    registry: Registry,
    name: str,
    contact: str,
    issued: date,
    expires: date | None = None,
) -> tuple[IssuedCard, str]:
    """Sign a card valid through `expires` (default a year), record it (with the contact)
    in the registry; return it and its QR text."""
    contact = _check_contact(contact)
    for _ in range(8):
        text = signer.issue(name, issued, expires=expires)
        # Parsing our own output gives the normalised name the door will show.
        card = parse_card(text, signer.keyring())
        if not registry.has_card(card.card_id):
            break
    else:  # 8 collisions in a 50-bit id space means the random source is broken
        raise ProvisioningError("could not draw an unused card id")
    record = IssuedCard(card.card_id, card.name, contact, card.issued, card.key_id, card.expires)
    registry.add_card(record)
    return record, text


def render_card(text: str, out: Path) -> None:
    """Write the card's QR as PNG or SVG (by `out`'s suffix), sized for printing.

    Error correction M (15 %) survives a worn or folded card; the quiet zone is the
    4 modules the QR standard asks for. No ECI header, like the CCCD codes: readers
    must cope with plain UTF-8 byte mode anyway (see DOMAIN.md on zbar).
    """
    check_card_output(out)
    # Without encoding=, segno writes text that fits Latin-1 as Latin-1 ("Võ Anh" -> b"V\xf5 Anh"),
    # which every reader here refuses as not UTF-8.
    qr = segno.make(text, error="m", encoding="utf-8", micro=False)
    buffer = io.BytesIO()
    if out.suffix.lower() == ".png":
        qr.save(buffer, kind="png", scale=PNG_SCALE, border=QUIET_ZONE_MODULES, dpi=PNG_DPI)
    else:
        qr.save(buffer, kind="svg", scale=SVG_MODULE_MM, unit="mm", border=QUIET_ZONE_MODULES)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue())
