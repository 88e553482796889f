"""The QR decoders, each test run on zxing-cpp and on zbar: exact text or an honest refusal.

Frames are real: codes rendered by segno as PNG at 4 px per module and pasted into a
640×480 grey frame, as a card held up to the camera would be, and the real-photo
corpus shared beside the repository.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import segno
from PIL import Image
from pyzbar import pyzbar

from device.decoders import (
    NOT_UTF8,
    Decoder,
    DecoderError,
    DecoderName,
    ZbarDecoder,
    ZxingDecoder,
    make_decoder,
    symbol_from_bytes,
)
from doorscan.errors import ConfigError, DoorscanError
from doorscan.synthetic import (
    COMMUNES,
    DISTRICTS,
    HAMLETS,
    cccd_text,
    health_text,
    make_people,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# In CI the shared folder is a sibling of the clone, as it is in the sandbox.
CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "qr-photos"
FRAME_SIZE = (640, 480)  # width, height
DECODERS: list[DecoderName] = ["zxing", "zbar"]


def qr_image(content: str | bytes, *, scale: int = 4, **options: object) -> np.ndarray:
    """A QR code as a grey array, through a real PNG, quiet zone included.

    Text is always encoded as UTF-8 bytes without an ECI, like the CCCD cards: segno
    would otherwise pick ISO-8859-1 for a string such as "Thôn 3".
    """
    if isinstance(content, str) and "encoding" not in options:
        options["encoding"] = "utf-8"
    code = segno.make(content, error="m", micro=False, **options)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=scale, border=4)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def camera_frame(*codes: tuple[np.ndarray, tuple[int, int]], background: int = 150) -> np.ndarray:
    """A 640×480 grey wall with each (code, (x, y)) pasted on it."""
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0]), background, dtype=np.uint8)
    for code, (x, y) in codes:
        frame[y : y + code.shape[0], x : x + code.shape[1]] = code
    return frame


def offset_for(index: int, code: np.ndarray) -> tuple[int, int]:
    """A different place in the frame for each code, deterministic."""
    return (
        (index * 37) % (FRAME_SIZE[0] - code.shape[1]),
        (index * 53) % (FRAME_SIZE[1] - code.shape[0]),
    )


@pytest.fixture(params=DECODERS)
def decoder(request: pytest.FixtureRequest) -> Iterator[Decoder]:
    made = make_decoder(request.param)
    assert made.name == request.param
    yield made
    made.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def people_codes() -> list[tuple[str, np.ndarray]]:
    """200 synthetic people's CCCD and health QR texts, each rendered once."""
    texts = []
    for i, person in enumerate(make_people(200, seed=7)):
        texts += [cccd_text(person), health_text(person, masked=i % 3 == 0)]
    return [(text, qr_image(text)) for text in texts]


def test_synthetic_people_read_byte_exact(
    decoder: Decoder, people_codes: list[tuple[str, np.ndarray]]
) -> None:
    wrong = []
    for i, (text, code) in enumerate(people_codes):
        got = [symbol.text for symbol in decoder.decode(camera_frame((code, offset_for(i, code))))]
        if got != [text]:
            wrong.append((text, got))
    print(f"{decoder.name}: {len(people_codes) - len(wrong)} of {len(people_codes)} exact")
    assert not wrong, f"{len(wrong)} of {len(people_codes)} misread, first: {wrong[:3]}"


# --- the encoding trap -------------------------------------------------------------

TRAP_FIXED = ["Thôn 3", "Nữ", "Rơ Châm", "H'Lũy", "Nguyễn Văn An", "Đặng Thị Hằng", "Buôn Ma Rừng"]


@pytest.fixture(scope="module")
def garbled_by_stock_pyzbar() -> list[tuple[str, np.ndarray]]:
    """Strings (with their frames) that pyzbar's stock decode() returns as mojibake."""
    names = sorted({person.name for person in make_people(200, seed=7)})
    garbled = []
    for i, text in enumerate(dict.fromkeys(TRAP_FIXED + names + HAMLETS + COMMUNES + DISTRICTS)):
        code = qr_image(text)
        frame = camera_frame((code, offset_for(i, code)))
        found = pyzbar.decode(frame, symbols=[pyzbar.ZBarSymbol.QRCODE])
        assert len(found) == 1, f"stock pyzbar did not even find {text!r}"
        if found[0].data.decode("utf-8", errors="replace") != text:
            garbled.append((text, frame))
    return garbled


def test_the_trap_is_real_and_binary_mode_escapes_it(
    decoder: Decoder, garbled_by_stock_pyzbar: list[tuple[str, np.ndarray]]
) -> None:
    texts = [text for text, _ in garbled_by_stock_pyzbar]
    print(f"stock pyzbar garbled {len(texts)} strings, e.g. {texts[:5]}")
    assert "Thôn 3" in texts  # the example the domain notes give
    wrong = [
        (text, got)
        for text, frame in garbled_by_stock_pyzbar
        if (got := [s.text for s in decoder.decode(frame)]) != [text]
    ]
    assert not wrong, f"{decoder.name} misread {len(wrong)} of {len(texts)}: {wrong[:3]}"


# --- frames with nothing, with two codes, with odd bytes ---------------------------


@pytest.mark.parametrize("background", [0, 150, 255])
def test_uniform_frame_has_no_code(decoder: Decoder, background: int) -> None:
    assert decoder.decode(np.full((720, 1280), background, dtype=np.uint8)) == []


def test_noise_and_tiny_frames_have_no_code(decoder: Decoder) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8)
    assert decoder.decode(noise) == []
    assert decoder.decode(np.zeros((0, 0), dtype=np.uint8)) == []
    assert decoder.decode(np.full((1, 1), 7, dtype=np.uint8)) == []


def test_small_code_on_a_door_frame(decoder: Decoder) -> None:
    """A card held back from the camera: 2 px per module on a 1280×720 frame."""
    text = cccd_text(make_people(1, seed=9)[0])
    code = qr_image(text, scale=2)
    assert code.shape[1] < 1280 // 8
    frame = np.full((720, 1280), 120, dtype=np.uint8)
    frame[500 : 500 + code.shape[0], 900 : 900 + code.shape[1]] = code
    assert [s.text for s in decoder.decode(frame)] == [text]


def test_two_codes_in_one_frame(decoder: Decoder) -> None:
    person = make_people(1, seed=3)[0]
    left, right = qr_image(cccd_text(person)), qr_image(health_text(person))
    frame = camera_frame((left, (10, 20)), (right, (640 - right.shape[1] - 10, 200)))
    texts = sorted(s.text or "" for s in decoder.decode(frame))
    assert texts == sorted([cccd_text(person), health_text(person)])


def test_bytes_that_are_not_utf8(decoder: Decoder) -> None:
    payload = b"064\xff\xfe|Th\xf4n 3"  # 0xFF and 0xFE never occur in UTF-8
    [symbol] = decoder.decode(camera_frame((qr_image(payload, mode="byte"), (100, 80))))
    assert (symbol.text, symbol.raw, symbol.error) == (None, payload, NOT_UTF8)


def test_leading_bom_is_stripped_once(decoder: Decoder) -> None:
    payload = "\ufeff\ufeffThôn 3".encode()
    [symbol] = decoder.decode(camera_frame((qr_image(payload, mode="byte"), (100, 80))))
    assert (symbol.text, symbol.raw, symbol.error) == ("\ufeffThôn 3", payload, None)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [("Thôn 3, Tỉnh Gia Lai", "utf-8"), ("Łódź \\ ą", "iso-8859-2"), ("日本語", "shift_jis")],
)
def test_a_declared_eci_charset_is_honoured_alike(
    decoder: Decoder, text: str, encoding: str
) -> None:
    # Byte mode: segno writes the ECI header only for byte segments.
    code = qr_image(text, encoding=encoding, eci=True, mode="byte")
    [symbol] = decoder.decode(camera_frame((code, (50, 50))))
    assert (symbol.text, symbol.raw, symbol.error) == (text, text.encode(), None)


def test_undeclared_shift_jis_is_not_guessed(decoder: Decoder) -> None:
    payload = "日本語".encode("shift_jis")
    [symbol] = decoder.decode(camera_frame((qr_image(payload, mode="byte"), (50, 50))))
    assert (symbol.text, symbol.error) == (None, NOT_UTF8)


def test_micro_qr_is_not_looked_for(decoder: Decoder) -> None:
    code = segno.make("064090123456", micro=True)
    assert code.is_micro
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=6, border=2)
    micro = np.asarray(Image.open(buffer).convert("L"))
    assert decoder.decode(camera_frame((micro, (200, 200)))) == []


def test_non_contiguous_frame_reads(decoder: Decoder) -> None:
    """A crop of a bigger frame is a strided view; the decoders must not read its gaps."""
    text = cccd_text(make_people(1, seed=5)[0])
    big = np.zeros((600, 900), dtype=np.uint8)
    big[50:530, 100:740] = camera_frame((qr_image(text), (300, 150)))
    crop = big[50:530, 100:740]
    assert not crop.flags.c_contiguous
    assert [s.text for s in decoder.decode(crop)] == [text]
    assert [s.text for s in decoder.decode(np.asfortranarray(crop))] == [text]


def test_wrong_frame_shapes_are_refused(decoder: Decoder) -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        decoder.decode(np.zeros((48, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        decoder.decode(np.zeros((48, 64), dtype=np.float32))


@pytest.mark.parametrize("decoder_class", [ZxingDecoder, ZbarDecoder])
def test_lifecycle(decoder_class: type[ZxingDecoder] | type[ZbarDecoder]) -> None:
    with decoder_class() as made:
        assert made.decode(np.full((10, 10), 255, dtype=np.uint8)) == []
    made.close()  # idempotent
    with pytest.raises(DecoderError, match="closed") as raised:
        made.decode(np.full((10, 10), 255, dtype=np.uint8))
    assert isinstance(raised.value, DoorscanError) and isinstance(raised.value, RuntimeError)


def test_make_decoder_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match="'quirc'"):
        make_decoder("quirc")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"", ""),
        ("Nữ".encode(), "Nữ"),
        (b"\xef\xbb\xbfNam", "Nam"),
        (b"\xef\xbb\xbf", ""),
        (b"\xed\xa0\x80", None),  # an encoded surrogate: not UTF-8
        (b"\xc0\xaf", None),  # overlong "/"
        (b"Nam\xef\xbb", None),  # a cut-off sequence
    ],
)
def test_text_rule(raw: bytes, text: str | None) -> None:
    symbol = symbol_from_bytes(raw)
    assert (symbol.text, symbol.raw) == (text, raw)
    assert symbol.error == (None if text is not None else NOT_UTF8)


# --- real photographs --------------------------------------------------------------


def _corpus_baselines() -> dict[str, int]:
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    row = re.search(r"^\|\s*total\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", readme, re.M)
    assert row, "the corpus README has no 'total' row with the baselines"
    return {"images": int(row[1]), "zxing": int(row[2]), "zbar": int(row[3])}


@pytest.mark.parametrize("name", DECODERS)
def test_real_photos(name: DecoderName) -> None:
    if not (CORPUS / "manifest.json").is_file():
        pytest.skip(f"the shared QR photo corpus is not at {CORPUS}")
    manifest = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
    baseline = _corpus_baselines()
    assert len(manifest) == baseline["images"]
    decoded, wrong = 0, []
    with make_decoder(name) as decoder:  # type: ignore[attr-defined]
        for entry in manifest:
            grey = np.asarray(Image.open(CORPUS / entry["file"]).convert("L"))
            texts = [s.text for s in decoder.decode(grey) if s.text is not None]
            wrong += [(entry["file"], t) for t in texts if t != entry["expected"]]
            decoded += entry["expected"] in texts
    print(f"{name}: {decoded} of {len(manifest)} photos read, baseline {baseline[name]}")
    assert not wrong, f"wrong decodes: {wrong}"
    assert decoded >= baseline[name]
