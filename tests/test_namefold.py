"""Name folding for diacritic- and case-blind search (hub/namefold.py)."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from doorscan.synthetic import make_people
from hub.namefold import fold


def test_what_a_tracer_types_matches_the_stored_name() -> None:
    assert fold("Nguyễn Văn An") == fold("nguyen van an") == "nguyen van an"
    assert fold("NGUYỄN   VĂN AN ") == "nguyen van an"
    assert fold("Đặng Thị Ðào") == "dang thi dao"
    assert fold("Rơ Châm H'Hen") == "ro cham h'hen"
    assert fold("Nguyễn Văn An") != fold("Nguyễn Văn Ân Hòa")


def test_every_synthetic_name_folds_to_plain_ascii_in_both_normal_forms() -> None:
    for person in make_people(300, seed=5):
        folded = fold(person.name)
        assert folded.isascii(), (person.name, folded)
        assert fold(unicodedata.normalize("NFD", person.name)) == folded
        assert fold(person.name.upper()) == folded


@given(st.text(max_size=30))
def test_folding_is_idempotent(text: str) -> None:
    assert fold(fold(text)) == fold(text)
