"""Folding a Vietnamese name for search: no diacritics, no case, single spaces.

A tracer types "nguyen van an" on a keyboard without Telex and must find "Nguyễn Văn
An"; a venue's paper list may say "NGUYỄN VĂN AN". `fold` maps all of them to one key:

    >>> fold("Nguyễn Văn An"), fold("  NGUYỄN   văn an "), fold("Đặng Thị Ðào")
    ('nguyen van an', 'nguyen van an', 'dang thi dao')

Steps: casefold, NFD (so precomposed and decomposed input agree), drop combining marks (the
tone and vowel marks), map đ/Đ (and the look-alike Ð, U+00D0, which old Windows
keyboards type) to d, which NFD does not decompose, and collapse spaces.
Apostrophes and hyphens stay: "H'Hen" is not "Hhen".
"""

from __future__ import annotations

import unicodedata

__all__ = ["fold"]

_D = str.maketrans({"đ": "d", "Đ": "d", "Ð": "d", "ð": "d"})
_LATIN_FOLD = str.maketrans(
    {chr(c): None for c in range(0x300, 0x370) if unicodedata.combining(chr(c))}
    | {"đ": "d", "Đ": "d", "Ð": "d", "ð": "d"}
)
"""The combining marks of U+0300-U+036F (every mark a Vietnamese name carries) and the
d's, in one table: `str.translate` in C, where the walk below costs a call per letter."""


def fold(text: str) -> str:
    # Casefold first: it can itself produce combining marks ("İ" becomes "i" + dot).
    decomposed = unicodedata.normalize("NFD", text.casefold())
    bare = decomposed.translate(_LATIN_FOLD)
    if not bare.isascii():
        # Another script, whose marks may lie elsewhere: the exact walk.
        bare = "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_D)
    return " ".join(bare.split())
