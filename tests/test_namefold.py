"""Name folding for diacritic- and case-blind search (hub/namefold.py)."""

from __future__ import annotations

import unicodedata

from hypothesis import example, given
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


def _fold_by_walk(text: str) -> str:
    """The folding rule written out plainly: every combining mark dropped, d's mapped."""
    decomposed = unicodedata.normalize("NFD", text.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.translate(str.maketrans("đÐð", "ddd")).split())


@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from("Nguyễn Đặng Ðào ỹ ̣ ͏ ᷄ İ ǅ ß"), st.characters(max_codepoint=0x2FFF)
        ),
        max_size=30,
    )
)
@example("a\u034fb")  # the grapheme joiner: in the marks' block, but not a combining mark
@example("Tr\u1ea7n \u0110\u1ee9c")
def test_the_quick_fold_is_the_rule(text: str) -> None:
    """Any text, any script: the table-driven fold says what the walk says."""
    assert fold(text) == _fold_by_walk(text)
