"""QR payload parsers: turn the text of a code shown at the door into an `Identity`.

Three kinds are accepted, everything else is refused:

* ``cccd``: the QR on the chip-based citizen ID card (Căn cước công dân)::

      id12|old_id9_or_empty|full name|ddmmyyyy|Nam or Nữ|address|ddmmyyyy

  Seven or more fields; extra fields are ignored because newer cards may add some.
* ``health``: the personal health QR of the national app (MIC spec v1.1)::

      SoGiayTo|HoTen|NgaySinh|LoaiDinhDanh|QID|EXT

  SoGiayTo (the ID document number) may have its first six characters masked with ``*``.
* ``card``: doorscan's own signed visitor card (see `doorscan.cards`).

Each parser is strict (a length cap and a grammar) and refuses with a `Refusal` whose
`code` names the rule and whose `reason` a technician can read. The same parsers run
on the door unit and in `hub import-csv`, so a code is judged the same everywhere.

Person matching: an unmasked document number is the person (``id:<number>``), so a
CCCD and a health QR carrying the same number are one person. A masked health QR
falls back to the app's user id (``qid:<QID>``); a visitor card to ``card:<card id>``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from doorscan.cards import CARD_PREFIX, CARD_PREFIX_V1, CardKeyring, parse_card
from doorscan.errors import Refusal
from doorscan.wire.limits import MAX_QR_CHARS

__all__ = [
    "MAX_QR_CHARS",
    "Identity",
    "IdentityKind",
    "parse_cccd",
    "parse_health_qr",
    "parse_qr",
    "person_key_for_id",
]

IdentityKind = Literal["cccd", "health", "card"]

# MAX_QR_CHARS (the wire's limit): no accepted code is longer; a CCCD is about 150.
MAX_NAME_CHARS = 100
MAX_ADDRESS_CHARS = 300

# Province codes that open a CCCD number (Circular 07/2016/TT-BCA, 63 provinces).
PROVINCE_CODES = frozenset(
    "001 002 004 006 008 010 011 012 014 015 017 019 020 022 024 025 026 027 030 031 033 "
    "034 035 036 037 038 040 042 044 045 046 048 049 051 052 054 056 058 060 062 064 066 "
    "067 068 070 072 074 075 077 079 080 082 083 084 086 087 089 091 092 093 094 095 096".split()
)

_TWELVE_DIGITS = re.compile(r"\d{12}")
_NINE_DIGITS = re.compile(r"\d{9}")
_DDMMYYYY = re.compile(r"\d{8}")
_DOC_NUMBER = re.compile(r"\**[0-9A-Z]+")
_QID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ICT = timedelta(hours=7)  # Vietnam's zone; "today" on a card means today in Vietnam


@dataclass(frozen=True)
class Identity:
    """Who a code says the visitor is. `person_key` is what matching uses."""

    kind: IdentityKind
    person_key: str
    id_number: str
    name: str
    birth_date: str | None = None  # ISO date, or just a year when that is all the code says
    sex: str | None = None
    address: str | None = None
    masked: bool = False


def person_key_for_id(id_number: str) -> str:
    """The person key of an unmasked document number (CCCD, CMND or passport)."""
    return f"id:{id_number}"


def _today_vn() -> date:
    return (datetime.now(UTC) + _ICT).date()


def _clean(text: str, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """NFC-normalise one field and refuse control characters and over-long values."""
    value = unicodedata.normalize("NFC", text).strip()
    if not value and not allow_empty:
        raise Refusal(f"{what}_missing", f"the {what.replace('_', ' ')} is empty")
    if len(value) > max_chars:
        raise Refusal(
            f"{what}_too_long", f"the {what.replace('_', ' ')} is over {max_chars} characters"
        )
    # isprintable() (in C) is false for every control/format character, and for a few
    # separators: only then is the exact per-character check worth its time.
    if not value.isprintable() and any(unicodedata.category(c)[0] == "C" for c in value):
        raise Refusal(
            "control_character", f"the {what.replace('_', ' ')} holds a control character"
        )
    return value


def _latin_name_chars() -> tuple[frozenset[str], frozenset[str]]:
    """The letters, and every character a name may hold, of the Latin blocks Vietnamese
    names are written in (U+0000-U+036F and Latin Extended Additional, U+1E00-U+1EFF)."""
    block = [chr(c) for c in (*range(0x370), *range(0x1E00, 0x1F00))]
    letters = frozenset(c for c in block if unicodedata.category(c)[0] == "L")
    marks = frozenset(c for c in block if unicodedata.category(c)[0] == "M")
    return letters, letters | marks | frozenset(" '’.-")


_NAME_LETTERS, _NAME_CHARS = _latin_name_chars()


def _check_name(text: str) -> str:
    name = _clean(text, "name", MAX_NAME_CHARS)
    chars = set(name)
    if chars <= _NAME_CHARS and not chars.isdisjoint(_NAME_LETTERS):
        # The common case decided by two set operations in C; a name with a character
        # of any other script takes the exact walk below, which says what is wrong.
        return " ".join(name.split())
    # Letters (with their combining marks), spaces and the few marks names use: H'Hen, Rơ Châm.
    for c in name:
        if not (unicodedata.category(c)[0] in "LM" or c in " '’.-"):
            raise Refusal(
                "name_character",
                f"the name holds a character of Unicode class {unicodedata.category(c)}, "
                "which no name has",
            )
    if not any(unicodedata.category(c)[0] == "L" for c in name):
        raise Refusal("name_character", "the name has no letter")
    return " ".join(name.split())


def _ddmmyyyy(text: str, what: str) -> date:
    if not _DDMMYYYY.fullmatch(text):
        raise Refusal(f"{what}_format", f"the {what.replace('_', ' ')} is not ddmmyyyy")
    try:
        return date(int(text[4:]), int(text[2:4]), int(text[:2]))
    except ValueError:
        raise Refusal(
            f"{what}_invalid", f"the {what.replace('_', ' ')} is not a real date"
        ) from None


def parse_cccd(text: str, *, today: date | None = None) -> Identity:
    """Parse the QR text of a chip-based citizen ID card.

    >>> parse_cccd("064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3, Xã Ia Kha|15082021").name
    'Nguyễn Văn An'
    """
    today = today or _today_vn()
    if len(text) > MAX_QR_CHARS:
        raise Refusal("too_long", f"the code is over {MAX_QR_CHARS} characters")
    text = unicodedata.normalize("NFC", text)
    fields = text.split("|")
    if len(fields) < 7:
        raise Refusal("cccd_fields", f"a CCCD code has 7 fields, this one {len(fields)}")
    id_number, old_id, name_text, birth_text, sex_text, address_text, issued_text = fields[:7]
    if not _TWELVE_DIGITS.fullmatch(id_number):
        raise Refusal("cccd_number", "the CCCD number must be exactly 12 digits")
    if old_id and not _NINE_DIGITS.fullmatch(old_id):
        raise Refusal("cccd_old_number", "the old ID number must be empty or 9 digits")
    name = _check_name(name_text)
    birth = _ddmmyyyy(birth_text, "birth_date")
    issued = _ddmmyyyy(issued_text, "issue_date")
    sex = {"nam": "Nam", "nữ": "Nữ"}.get(sex_text.strip().casefold())
    if sex is None:
        raise Refusal("cccd_sex", "the sex field must be Nam or Nữ")
    address = _clean(address_text, "address", MAX_ADDRESS_CHARS, allow_empty=True)

    if birth.year < 1900 or birth > today:
        raise Refusal("birth_date_invalid", "the birth date is before 1900 or in the future")
    if issued < birth or issued.year < 2016 or issued > today + timedelta(days=1):
        raise Refusal(
            "issue_date_invalid",
            "the issue date is before 2016, before the birth date or in the future",
        )
    # The number encodes where and when: province, then century and sex, then the year.
    if id_number[:3] not in PROVINCE_CODES:
        raise Refusal("cccd_number", "the CCCD number does not start with a province code")
    century_sex = int(id_number[3])
    century = 1900 + 100 * (century_sex // 2)
    if century + int(id_number[4:6]) != birth.year:
        raise Refusal("cccd_number", "the CCCD number does not match the birth year")
    if ("Nam", "Nữ")[century_sex % 2] != sex:
        raise Refusal("cccd_number", "the CCCD number does not match the sex")
    return Identity(
        kind="cccd",
        person_key=person_key_for_id(id_number),
        id_number=id_number,
        name=name,
        birth_date=birth.isoformat(),
        sex=sex,
        address=address or None,
    )


def _health_birth(text: str) -> str | None:
    """NgaySinh: the spec's format is unconfirmed, so take the forms seen in practice."""
    text = text.strip()
    if not text:
        return None
    for pattern, fmt in (
        (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d"),
        (r"\d{2}/\d{2}/\d{4}", "%d/%m/%Y"),
        (r"\d{8}", "%d%m%Y"),
    ):
        if re.fullmatch(pattern, text):
            try:
                return datetime.strptime(text, fmt).date().isoformat()
            except ValueError:
                raise Refusal("birth_date_invalid", "the birth date is not a real date") from None
    if re.fullmatch(r"\d{4}", text) and 1900 <= int(text) <= 2100:
        return text  # only the year is known
    raise Refusal("birth_date_format", "the birth date is in no known format")


def parse_health_qr(text: str) -> Identity:
    """Parse a personal health QR (MIC spec v1.1).

    >>> parse_health_qr("******123456|NGUYEN VAN AN|1990-01-01|0|a1b2c3|").person_key
    'qid:a1b2c3'
    """
    if len(text) > MAX_QR_CHARS:
        raise Refusal("too_long", f"the code is over {MAX_QR_CHARS} characters")
    text = unicodedata.normalize("NFC", text)
    fields = text.split("|")
    if len(fields) < 6:
        raise Refusal("health_fields", f"a health QR has 6 fields, this one {len(fields)}")
    doc_text, name_text, birth_text, declared_text, qid_text = fields[:5]
    ext = "|".join(fields[5:])  # the inner format of EXT is unconfirmed: keep it whole
    doc = doc_text.strip().upper()
    if not _DOC_NUMBER.fullmatch(doc) or len(doc) > 20:
        raise Refusal("health_document", "SoGiayTo must be up to 20 letters and digits")
    stars = len(doc) - len(doc.lstrip("*"))
    if stars > 6:
        raise Refusal("health_document", "only the first 6 characters of SoGiayTo may be masked")
    if len(doc) - stars < 3:
        raise Refusal("health_document", "SoGiayTo is too short")
    if declared_text.strip() not in ("0", "1"):
        raise Refusal("health_declared", "LoaiDinhDanh must be 0 or 1")
    qid = qid_text.strip()
    if not _QID.fullmatch(qid):
        raise Refusal("health_qid", "QID must be 1-64 letters, digits or -_.:")
    _clean(ext, "ext", 256, allow_empty=True)
    name = _check_name(name_text)
    masked = stars > 0
    return Identity(
        kind="health",
        person_key=f"qid:{qid}" if masked else person_key_for_id(doc),
        id_number=doc,
        name=name,
        birth_date=_health_birth(birth_text),
        masked=masked,
    )


def parse_qr(
    text: str, *, card_keys: CardKeyring | None = None, today: date | None = None
) -> Identity:
    """Parse any code shown at a door; raise `Refusal` for anything not accepted.

    The kind is told by shape, before any field is judged, so that a CCCD with one
    bad field is refused for that field and not as "unknown code".
    """
    if len(text) > MAX_QR_CHARS:
        raise Refusal("too_long", f"the code is over {MAX_QR_CHARS} characters")
    if not text.strip():
        raise Refusal("empty", "the code is empty")
    if text.startswith((CARD_PREFIX, CARD_PREFIX_V1)):
        card = parse_card(text, card_keys, today)
        return Identity(
            kind="card", person_key=f"card:{card.card_id}", id_number=card.card_id, name=card.name
        )
    fields = text.split("|")
    if len(fields) >= 7 and unicodedata.normalize("NFC", fields[4]).strip().casefold() in (
        "nam",
        "nữ",
    ):
        return parse_cccd(text, today=today)
    if len(fields) >= 6 and fields[3].strip() in ("0", "1"):
        return parse_health_qr(text)
    raise Refusal("unknown_code", "not a CCCD, a health QR or a doorscan visitor card")
