"""The examples in the shared modules' docstrings run, and say what they do.

Only modules whose every example is meant to run (the rest mark theirs ``+SKIP``).
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "doorscan.wire",
    "doorscan.wire.codec",
    "doorscan.mqtt",
    "doorscan.mqtt_fake",
    "doorscan.timefmt",
]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
