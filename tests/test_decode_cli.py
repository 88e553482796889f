"""`python -m device decode`, run as a real subprocess on rendered image files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import segno

from device.cli import build_parser, main
from device.decoders import NOT_UTF8
from doorscan.cards import CardSigner
from doorscan.errors import Refusal
from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text, make_people

REPO_ROOT = Path(__file__).resolve().parents[1]
CCCD = cccd_text(make_people(1, seed=11)[0])


def write_qr(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        code = segno.make(content, error="m", encoding="utf-8", micro=False)
    else:
        code = segno.make(content, error="m", mode="byte", micro=False)
    code.save(str(path), scale=4, border=4)
    return path


def run_decode(*args: str | Path) -> tuple[int, list[dict[str, Any]]]:
    # An ASCII-only stdout encoding: the command must still write its UTF-8 lines.
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "device", "decode", *map(str, args)],
        capture_output=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.stderr == b"", done.stderr.decode(errors="replace")
    lines = done.stdout.decode("utf-8").splitlines()
    return done.returncode, [json.loads(line) for line in lines]


def refusal_reason(text: str) -> str:
    with pytest.raises(Refusal) as refused:
        parse_qr(text)
    return refused.value.reason


@pytest.mark.parametrize("decoder", ["zxing", "zbar"])
def test_decode_files_one_json_line_each(tmp_path: Path, decoder: str) -> None:
    cccd = write_qr(tmp_path / "cccd.png", CCCD)
    hello = write_qr(tmp_path / "hello.png", "hello")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is no image")
    latin1 = write_qr(tmp_path / "latin1.png", "Thôn 3".encode("latin-1"))

    status, lines = run_decode("--decoder", decoder, cccd, hello, broken, latin1)

    assert status == 1  # one file could not be read
    assert [line["file"] for line in lines] == [str(cccd), str(hello), str(broken), str(latin1)]
    assert lines[0] == {
        "file": str(cccd),
        "codes": [{"text": CCCD, "kind": "cccd", "valid": True, "error": None}],
    }
    assert lines[1] == {
        "file": str(hello),
        "codes": [
            {"text": "hello", "kind": None, "valid": False, "error": refusal_reason("hello")}
        ],
    }
    assert lines[2]["codes"] == [] and "broken.png" in lines[2]["error"]
    assert lines[3]["codes"] == [{"text": None, "kind": None, "valid": False, "error": NOT_UTF8}]


def test_visitor_cards_need_the_card_key(tmp_path: Path) -> None:
    signer = CardSigner.generate()
    key = tmp_path / "card-key.pem"
    key.write_bytes(signer.public_pem())
    card_text = signer.issue("Rơ Châm H'Hen", date(2022, 1, 10))
    card = write_qr(tmp_path / "card.png", card_text)
    cccd = write_qr(tmp_path / "cccd.png", CCCD)

    status, lines = run_decode("--card-key", key, card, cccd)

    assert status == 0
    assert lines[0]["codes"] == [{"text": card_text, "kind": "card", "valid": True, "error": None}]
    assert lines[1]["codes"][0]["kind"] == "cccd"


def test_decode_judges_with_a_units_card_keys(tmp_path: Path) -> None:
    """``--config unit.json``: the door's own card keys, paths relative to the config."""
    signer = CardSigner.generate()
    (tmp_path / "card-key.pem").write_bytes(signer.public_pem())
    config = tmp_path / "unit.json"
    config.write_text(
        json.dumps(
            {"unit_id": "door-1", "venue_id": "v1", "data_dir": "d", "card_keys": ["card-key.pem"]}
        )
    )
    card_text = signer.issue("Rơ Châm H'Hen", date(2022, 1, 10))
    card = write_qr(tmp_path / "card.png", card_text)

    status, lines = run_decode("--config", config, card)

    assert status == 0
    assert lines[0]["codes"] == [{"text": card_text, "kind": "card", "valid": True, "error": None}]


def test_card_refused_without_key_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card_text = CardSigner.generate().issue("Nay H'Lũy", date(2022, 1, 10))
    card = write_qr(tmp_path / "card.png", card_text)
    assert main(["decode", "--decoder", "zbar", str(card)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    # Not judged invalid: nothing to check its signature with was given, and it says so.
    [code] = json.loads(line)["codes"]
    assert (code["text"], code["kind"], code["valid"]) == (card_text, None, False)
    assert code["error"].startswith("a doorscan visitor card, its signature not checked")
    assert "--card-key" in code["error"] and "--config UNIT_JSON" in code["error"]


def test_an_unloadable_card_key_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_qr(tmp_path / "cccd.png", CCCD)
    assert main(["decode", "--card-key", str(tmp_path / "missing.pem"), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "missing.pem" in captured.err


def test_parser_has_subcommands_with_handlers() -> None:
    args = build_parser().parse_args(["decode", "--decoder", "zbar", "a.png", "b.png"])
    assert (args.command, args.decoder, [str(f) for f in args.files]) == (
        "decode",
        "zbar",
        ["a.png", "b.png"],
    )
    assert callable(args.handler)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])  # a command is required
    assert exited.value.code == 2
