"""The QR payload parsers: what they accept, and a clear refusal for everything else."""

from __future__ import annotations

import contextlib
import unicodedata
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doorscan.cards import CardKeyring, CardSigner
from doorscan.errors import Refusal
from doorscan.payloads import parse_cccd, parse_health_qr, parse_qr
from doorscan.synthetic import cccd_text, health_text, make_people

TODAY = date(2022, 1, 15)
GOOD = (
    "064090123456||Nguyễn Văn An|01011990|Nam|"
    "Thôn 3, Xã Ia Kha, Huyện Ia Grai, Tỉnh Gia Lai|15082021"
)


def test_cccd_fields() -> None:
    who = parse_qr(GOOD, today=TODAY)
    assert (who.kind, who.person_key, who.name, who.birth_date, who.sex) == (
        "cccd",
        "id:064090123456",
        "Nguyễn Văn An",
        "1990-01-01",
        "Nam",
    )
    assert who.address == "Thôn 3, Xã Ia Kha, Huyện Ia Grai, Tỉnh Gia Lai"


def test_cccd_extra_fields_ignored_and_old_id_kept_optional() -> None:
    assert parse_cccd(GOOD + "|future|fields", today=TODAY).id_number == "064090123456"
    with_old = GOOD.replace("||", "|123456789|", 1)
    assert parse_cccd(with_old, today=TODAY).name == "Nguyễn Văn An"


def test_cccd_is_nfc_normalised() -> None:
    decomposed = unicodedata.normalize("NFD", GOOD)
    assert decomposed != GOOD
    who = parse_qr(decomposed, today=TODAY)
    assert who.name == "Nguyễn Văn An" and unicodedata.is_normalized("NFC", who.address or "")


def test_minority_names_and_upper_case_accepted() -> None:
    for name in ("Rơ Châm H'Hen", "KSOR BLỚI", "Nay H'Lũy"):
        text = GOOD.replace("Nguyễn Văn An", name)
        assert parse_qr(text, today=TODAY).name == name


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (GOOD.replace("064090123456", "06409012345"), "cccd_number"),  # 11 digits
        (GOOD.replace("064090123456", "0640901234567"), "cccd_number"),
        (GOOD.replace("064090123456", "999090123456"), "cccd_number"),  # no such province
        (GOOD.replace("064090123456", "064091123456"), "cccd_number"),  # year 1991 != 1990
        (GOOD.replace("064090123456", "064190123456"), "cccd_number"),  # female digit, "Nam"
        (GOOD.replace("01011990", "31021990"), "birth_date_invalid"),
        (GOOD.replace("01011990", "1990-01-01"), "birth_date_format"),
        (GOOD.replace("15082021", "15082031"), "issue_date_invalid"),  # in the future
        (GOOD.replace("15082021", "15082011"), "issue_date_invalid"),  # before CCCD existed
        (GOOD.replace("|Nam|", "|Male|"), "unknown_code"),
        (GOOD.replace("||", "|12345|", 1), "cccd_old_number"),
        (GOOD.replace("Nguyễn Văn An", "Nguyễn Văn 4n"), "name_character"),
        (GOOD.replace("Nguyễn Văn An", ""), "name_missing"),
        (GOOD.replace("Thôn 3", "Thôn\x1b[31m 3"), "control_character"),
        (GOOD.replace("Thôn 3", "x" * 400), "address_too_long"),
        ("hello world", "unknown_code"),
        ("https://example.org/?q=1", "unknown_code"),
        ("", "empty"),
        ("x" * 2000, "too_long"),
        ("'; DROP TABLE scans; --|a|b|c|Nam|d|e", "cccd_number"),
    ],
)
def test_bad_codes_refused_with_reason(text: str, code: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_qr(text, today=TODAY)
    assert refused.value.code == code
    assert refused.value.reason  # a sentence a technician can read
    _assert_quotes_nothing_personal(text, refused.value.reason)


def _assert_quotes_nothing_personal(text: str, reason: str) -> None:
    """A reason is logged and sent back in acks: it names the rule, never the person's data."""
    for field in (f.strip() for f in text.split("|")):
        if field in ("Nam", "Nữ") or len(field) < 3:
            continue  # the rule itself names these words
        pieces = [field, field[:3]] if field[:3].isdigit() else [field]
        for piece in pieces:
            assert piece not in reason, (piece, reason)


def test_health_qr_unmasked_is_the_same_person_as_the_cccd() -> None:
    person = make_people(1, seed=3)[0]
    cccd = parse_qr(cccd_text(person))
    health = parse_qr(health_text(person))
    assert health.kind == "health" and cccd.kind == "cccd"
    assert health.person_key == cccd.person_key


def test_health_qr_masked_falls_back_to_the_app_user_id() -> None:
    person = make_people(1, seed=3)[0]
    who = parse_health_qr(health_text(person, masked=True))
    assert who.masked and who.person_key == f"qid:{person.qid}"
    assert who.id_number.startswith("******")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("*******23456|NGUYEN VAN AN|1990-01-01|0|abc|", "health_document"),  # 7 masked
        ("064090123456|NGUYEN VAN AN|1990-01-01|2|abc|", "unknown_code"),
        ("064090123456|NGUYEN VAN AN|1990-13-01|0|abc|", "birth_date_invalid"),
        ("064090123456|NGUYEN VAN AN|sometime|0|abc|", "birth_date_format"),
        ("064090123456|NGUYEN VAN AN|1990-01-01|0||", "health_qid"),
        ("06-09|NGUYEN VAN AN|1990-01-01|0|abc|", "health_document"),
        ("064090123456|NGUYEN 3|1990-01-01|1|abc|", "name_character"),
    ],
)
def test_bad_health_codes_refused(text: str, code: str) -> None:
    with pytest.raises(Refusal) as refused:
        parse_qr(text)
    assert refused.value.code == code
    _assert_quotes_nothing_personal(text, refused.value.reason)


def test_health_ext_with_separators_is_kept_whole() -> None:
    who = parse_qr("064090123456|NGUYEN VAN AN|1990|0|abc|x|y|z")
    assert who.birth_date == "1990" and who.person_key == "id:064090123456"


def test_visitor_card_round_trip_and_forgeries() -> None:
    signer = CardSigner.generate()
    keys = signer.keyring()
    card = signer.issue("Rơ Châm H'Hen", issued=date(2021, 9, 1), card_id="7K3M9P2QXZ")
    who = parse_qr(card, card_keys=keys)
    assert (who.kind, who.person_key, who.name) == ("card", "card:7K3M9P2QXZ", "Rơ Châm H'Hen")

    altered = card.replace("H'Hen", "H'Hem")
    flipped = card[:-5] + ("A" if card[-5] != "A" else "B") + card[-4:]
    foreign = CardSigner.generate().issue("Rơ Châm H'Hen", issued=date(2021, 9, 1))
    for text, code in (
        (altered, "card_signature"),
        (flipped, "card_signature"),
        (foreign, "card_unknown_key"),
        (card + "|x", "card_format"),
    ):
        with pytest.raises(Refusal) as refused:
            parse_qr(text, card_keys=keys)
        assert refused.value.code == code
    with pytest.raises(Refusal) as refused:
        parse_qr(card, card_keys=None)
    assert refused.value.code == "card_no_key"


def test_keyring_loads_pem_files(tmp_path: Path) -> None:
    signer = CardSigner.generate()
    pem = tmp_path / "card.pub.pem"
    pem.write_bytes(signer.public_pem())
    keys = CardKeyring.from_pem_files([pem])
    assert parse_qr(signer.issue("An", issued=date(2021, 1, 1)), card_keys=keys).kind == "card"


def test_synthetic_population_is_accepted() -> None:
    for person in make_people(300, seed=11):
        assert parse_qr(cccd_text(person)).person_key == person.person_key


KEYS = CardSigner.generate().keyring()


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | st.builds("|".join, st.lists(st.text(max_size=30), max_size=9)))
def test_fuzz_parsers_only_ever_refuse(text: str) -> None:
    for parse in (
        lambda t: parse_qr(t, card_keys=KEYS),
        parse_cccd,
        parse_health_qr,
        lambda t: parse_qr("DSC1|" + t, card_keys=KEYS),
    ):
        with contextlib.suppress(Refusal):  # a refusal is fine; any other exception fails
            parse(text)


def _name_rule(name: str) -> bool:
    """The name rule, character by character: letters and marks, a few signs, one letter."""
    nfc = unicodedata.normalize("NFC", name).strip()
    allowed = all(unicodedata.category(c)[0] in "LM" or c in " '’.-" for c in nfc)
    return bool(nfc) and allowed and any(unicodedata.category(c)[0] == "L" for c in nfc)


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from("Nguyễn Văn Ánh H'Hen Rơ Châm ̣̀́-.’0_\u00a0\u200b\u0301ωЖ中"),
            st.characters(max_codepoint=0x1FFF),
        ),
        max_size=30,
    ).filter(lambda name: "|" not in name)
)
def test_name_check_agrees_with_the_per_character_rule(name: str) -> None:
    """The quick set check for Latin names decides as the rule does, whatever the text."""
    text = f"064090123456||{name}|01011990|Nam|Thôn 3|15082021"
    try:
        parse_cccd(text, today=date(2024, 1, 1))
    except Refusal as refusal:
        assert not _name_rule(name), f"{name!r} refused ({refusal}) though the rule allows it"
    else:
        assert _name_rule(name), f"{name!r} accepted though the rule refuses it"
