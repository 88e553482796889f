"""The README's "Using it" lines are commands that exist, with options that exist.

Each line is given to the real parser of its command (`build_parser` of the
provisioning, hub and device command lines) exactly as printed: an option renamed, a
required one left out or a subcommand gone makes this fail. Running them is the job of
docs/deploy.md's test; the one line that changes nothing, the installer's dry run, is
run here too.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from device.cli import build_parser as device_parser
from hub.cli import build_parser as hub_parser
from provisioning.cli import build_parser as provisioning_parser

REPO = Path(__file__).resolve().parent.parent
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "doorscan-provisioning": provisioning_parser,
    "doorscan-hub": hub_parser,
    "doorscan-device": device_parser,
}


def usage_lines() -> list[str]:
    """The logical lines of the README's "Using it" block: continuations joined, comments
    and blank lines dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's Using it section has no sh block"
    joined = block.group(1).replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(shlex.join(words))
    return lines


def test_the_usage_block_uses_every_command_family() -> None:
    first_words = {shlex.split(line)[0] for line in usage_lines()}
    assert set(PARSERS) <= first_words, first_words


@pytest.mark.parametrize("line", usage_lines())
def test_each_usage_line_parses(line: str) -> None:
    words = shlex.split(os.path.expandvars(line))
    if words[0] == "export":
        return
    if words[:2] == ["sudo", "deploy/install-hub.sh"]:
        done = subprocess.run(words[1:], cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "+ systemctl enable" in done.stdout
        return
    assert words[0] in PARSERS, f"{words[0]}: not a doorscan command"
    try:
        PARSERS[words[0]]().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{line!r} does not parse (exit {exc.code})")
