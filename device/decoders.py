"""QR decoders: one grey frame in, the exact text of every QR code in it out.

Two decoders sit behind one `Decoder` protocol, chosen by the unit's config
(``decoder: zxing | zbar``):

* `ZxingDecoder` (zxing-cpp, the default): reads more damaged and badly lit codes.
* `ZbarDecoder` (libzbar through ctypes): the long-standing alternative.

Both look for QR codes only and both apply one text rule, so a code reads the same
whichever decoder a unit runs: take the symbol's bytes, strip a leading UTF-8 BOM,
decode as strict UTF-8; bytes that are not UTF-8 give ``text=None`` and
``error="not UTF-8 text"``. No charset is ever guessed. Guessing is what garbles
Vietnamese: zbar, left to itself, tries Shift-JIS, Latin-1 and Big5 before UTF-8 on a
byte segment without an ECI header, and about a quarter of Vietnamese names come
back as mojibake. `ZbarDecoder` therefore runs zbar in binary mode.

A code that declares its charset with an ECI header is not guessed but told: zbar
transcodes such segments to UTF-8 even in binary mode, and `ZxingDecoder` does the
same with zbar's table of ECIs, so the two still agree (see `DecodedSymbol.raw`).

    >>> with ZbarDecoder() as decoder:                    # doctest: +SKIP
    ...     [symbol.text for symbol in decoder.decode(frame)]
    ['064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3, Xã Ia Kha|15082021']

Decoders are not thread-safe: use one per thread (the unit has one frame loop).
"""

from __future__ import annotations

import codecs
import ctypes
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import numpy as np
import zxingcpp

from doorscan.errors import ConfigError, DoorscanError
from doorscan.lifecycle import Closeable

__all__ = [
    "NOT_UTF8",
    "DecodedSymbol",
    "Decoder",
    "DecoderError",
    "DecoderName",
    "ZxingDecoder",
    "ZbarDecoder",
    "make_decoder",
    "symbol_from_bytes",
]

DecoderName = Literal["zxing", "zbar"]

NOT_UTF8 = "not UTF-8 text"
"""The `DecodedSymbol.error` of a code whose bytes are not UTF-8."""


class DecoderError(DoorscanError, RuntimeError):
    """The native decoder failed (library missing or too old, scan error, closed decoder)."""


@dataclass(frozen=True)
class DecodedSymbol:
    """One QR code found in a frame.

    `raw` is the symbol's content bytes as the decoder returns them; for a code with
    an ECI header they are already transcoded to UTF-8 from the declared charset
    (zbar does this itself; `ZxingDecoder` copies it). `text` is the exact text, or
    None when the bytes are not UTF-8, and then `error` says why.
    """

    text: str | None
    raw: bytes
    error: str | None = None


class Decoder(Protocol):
    """Finds the QR codes in a frame. Implementations: `ZxingDecoder`, `ZbarDecoder`."""

    name: str

    def decode(self, frame: np.ndarray) -> list[DecodedSymbol]:
        """Every QR code in `frame` (2-D uint8 grey, H×W); [] when there is none."""
        ...


def symbol_from_bytes(raw: bytes) -> DecodedSymbol:
    """The text rule both decoders share: strip one UTF-8 BOM, then strict UTF-8.

    >>> symbol_from_bytes("\\ufeffThôn 3".encode()).text
    'Thôn 3'
    >>> symbol_from_bytes(b"Th\\xf4n 3").error
    'not UTF-8 text'
    """
    content = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        return DecodedSymbol(text=content.decode("utf-8"), raw=raw)
    except UnicodeDecodeError:
        return DecodedSymbol(text=None, raw=raw, error=NOT_UTF8)


def _grey_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` as a C-contiguous 2-D uint8 array, which both native decoders read in place."""
    if frame.ndim != 2 or frame.dtype != np.uint8:
        raise ValueError(
            f"a frame must be a 2-D uint8 grey image, not {frame.ndim}-D {frame.dtype}"
        )
    return np.ascontiguousarray(frame)


# --- zxing-cpp ---------------------------------------------------------------------

# Standard QR only: Model 2, and the obsolete Model 1. zxing-cpp 3's `QRCode` also
# means Micro QR and rMQR: no card or app shows those at a door, and zbar cannot read
# them, so leaving them out keeps both decoders seeing the same codes.
_ZXING_FORMATS = zxingcpp.BarcodeFormats(
    [zxingcpp.BarcodeFormat.QRCodeModel1, zxingcpp.BarcodeFormat.QRCodeModel2]
)

# bytesECI begins with the AIM symbology identifier "]Q<m>"; modifiers 2, 4 and 6
# say the symbol carries ECI designators, which follow as a backslash and six digits.
_ECI_MODIFIERS = frozenset(b"246")


def _eci_codec(eci: int) -> str | None:
    """The Python codec of an ECI number, for exactly the ECIs zbar honours (qrdectxt.c)."""
    if eci in (0, 2):
        return "cp437"
    if eci in (1, 3):
        return "latin-1"
    if 4 <= eci <= 18 and eci != 14:
        return f"iso8859-{eci - 2}"
    return {20: "shift_jis", 26: "utf-8"}.get(eci)


def _transcode_eci(bytes_eci: bytes) -> bytes | None:
    """UTF-8 content of a symbol that declares ECIs, or None when it declares none.

    `bytes_eci` is zxing-cpp's bytesECI(): identifier, data with each backslash
    doubled, and ``\\NNNNNN`` where an ECI starts. An ECI zbar does not know leaves
    the current charset in force (as zbar does); bytes before any known ECI pass as
    they are. Raises UnicodeDecodeError when a segment is not valid in its charset.
    """
    if len(bytes_eci) < 3 or bytes_eci[:2] != b"]Q" or bytes_eci[2] not in _ECI_MODIFIERS:
        return None
    out = bytearray()
    segment = bytearray()
    codec: str | None = None

    def flush() -> None:
        out.extend(segment if codec is None else segment.decode(codec).encode("utf-8"))
        segment.clear()

    i = 3
    while i < len(bytes_eci):
        if bytes_eci[i] != 0x5C:  # not a backslash
            segment.append(bytes_eci[i])
            i += 1
        elif bytes_eci[i + 1 : i + 2] == b"\\":
            segment.append(0x5C)
            i += 2
        else:
            designator = bytes_eci[i + 1 : i + 7]
            if len(designator) != 6 or not designator.isdigit():
                raise DecoderError(f"zxing-cpp returned a malformed ECI designator {designator!r}")
            flush()
            codec = _eci_codec(int(designator)) or codec
            i += 7
    flush()
    return bytes(out)


class ZxingDecoder(Closeable):
    """QR decoding with zxing-cpp. Holds no native state; `close()` is for symmetry."""

    name = "zxing"

    def __init__(self) -> None:
        self._closed = False

    def decode(self, frame: np.ndarray) -> list[DecodedSymbol]:
        if self._closed:
            raise DecoderError("the zxing decoder is closed")
        grey = _grey_frame(frame)
        if grey.size == 0:
            return []
        try:
            barcodes = zxingcpp.read_barcodes(
                grey,
                formats=_ZXING_FORMATS,
                # The QR detector finds a code at any angle by itself (checked at 30, 90
                # and 180 degrees); try_rotate only matters to linear codes. Default kept.
                try_rotate=True,
                # A phone held close fills much of a 1280×720 frame with big, often
                # blurred modules; the downscaled passes find those. A small code far
                # away needs the full resolution, which is always scanned as well: a
                # CCCD code at 2 px per module (a tenth of the frame's width) is read.
                try_downscale=True,
                # Phones in dark mode show light-on-dark codes. This doubles the work
                # on frames with no code (most frames at a door) and is still cheap
                # next to zbar; one photo in the real-photo corpus needs it.
                try_invert=True,
                # LocalAverage copes with uneven light across the frame (a lit card in
                # a dark doorway) better than one global threshold.
                binarizer=zxingcpp.Binarizer.LocalAverage,
                is_pure=False,  # a camera frame, never a bare generated code
                # Only the hex of bytesECI is wanted from `text`: it tells whether the
                # code declares ECIs. The text itself would be transcoded from a
                # guessed charset, which is the very trap this module avoids.
                text_mode=zxingcpp.TextMode.HexECI,
                return_errors=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise DecoderError(f"zxing-cpp failed on a {grey.shape} frame: {exc}") from exc
        return [self._symbol(barcode) for barcode in barcodes if barcode.valid]

    @staticmethod
    def _symbol(barcode: zxingcpp.Barcode) -> DecodedSymbol:
        raw = bytes(barcode.bytes)  # the content as encoded, never transcoded
        try:
            declared = _transcode_eci(bytes.fromhex(barcode.text))
        except UnicodeDecodeError as exc:
            return DecodedSymbol(None, raw, f"not valid {exc.encoding} text, as its ECI declares")
        return symbol_from_bytes(raw if declared is None else declared)

    def close(self) -> None:
        self._closed = True


# --- zbar --------------------------------------------------------------------------

_ZBAR_CFG_ENABLE = 0
_ZBAR_CFG_BINARY = 4  # zbar >= 0.23.1; pyzbar 0.1.9's enum predates it
_ZBAR_CFG_TEST_INVERTED = 0x81  # zbar >= 0.23; a scanner-wide flag, set with symbology 0
_ZBAR_NONE = 0  # "every symbology" in set_config
_ZBAR_QRCODE = 64
_FOURCC_Y800 = int.from_bytes(b"Y800", "little")  # 8-bit grey, one byte per pixel


class ZbarDecoder(Closeable):
    """QR decoding with libzbar in binary mode, through pyzbar's ctypes bindings.

    One zbar image scanner lives as long as the decoder; `close()` frees it. The
    scanner holds per-scan state and ctypes releases the GIL during the scan, so a
    decoder must not be shared between threads.
    """

    name = "zbar"

    def __init__(self) -> None:
        try:
            # Imported here: pyzbar loads libzbar when imported, and a unit running
            # zxing must not need libzbar installed.
            from pyzbar import wrapper
        except ImportError as exc:
            raise DecoderError(
                f"libzbar is not available ({exc}); install it: apt-get install libzbar0"
            ) from exc
        self._zbar: ModuleType = wrapper
        scanner = wrapper.zbar_image_scanner_create()
        if not scanner:
            raise DecoderError("zbar could not create an image scanner")
        self._scanner: Any = scanner
        try:
            self._configure()
        except BaseException:
            self.close()
            raise

    def _configure(self) -> None:
        settings = (
            (_ZBAR_NONE, _ZBAR_CFG_ENABLE, 0, "disable every symbology"),
            (_ZBAR_QRCODE, _ZBAR_CFG_ENABLE, 1, "enable QR codes"),
            # Without binary mode zbar guesses the charset of byte segments and
            # garbles Vietnamese; older libzbar rejects this setting, and then this
            # decoder refuses to start rather than return mojibake.
            (_ZBAR_QRCODE, _ZBAR_CFG_BINARY, 1, "binary mode (needs zbar >= 0.23.1)"),
            # Dark-mode phone screens, as zxing's try_invert; zbar rescans an inverted
            # copy only when the frame gave nothing.
            (_ZBAR_NONE, _ZBAR_CFG_TEST_INVERTED, 1, "inverted codes (needs zbar >= 0.23)"),
        )
        for symbology, config, value, what in settings:
            if self._zbar.zbar_image_scanner_set_config(self._scanner, symbology, config, value):
                raise DecoderError(f"this libzbar refused to set up {what}")

    def decode(self, frame: np.ndarray) -> list[DecodedSymbol]:
        zbar = self._zbar
        if self._scanner is None:
            raise DecoderError("the zbar decoder is closed")
        grey = _grey_frame(frame)
        height, width = grey.shape
        if grey.size == 0:
            return []
        image = zbar.zbar_image_create()
        if not image:
            raise DecoderError("zbar could not create an image")
        try:
            zbar.zbar_image_set_format(image, _FOURCC_Y800)
            zbar.zbar_image_set_size(image, width, height)
            # zbar reads the pixels in place, without a copy and without a cleanup
            # handler: `grey` is referenced until the image is destroyed below.
            zbar.zbar_image_set_data(image, grey.ctypes.data, grey.nbytes, None)
            if zbar.zbar_scan_image(self._scanner, image) < 0:
                raise DecoderError(f"zbar failed to scan a {width}×{height} frame")
            symbols = []
            symbol = zbar.zbar_image_first_symbol(image)
            while symbol:
                # Parts of an incomplete structured-append set come as PARTIAL: skip.
                if symbol.contents.type == _ZBAR_QRCODE:
                    raw = ctypes.string_at(
                        zbar.zbar_symbol_get_data(symbol), zbar.zbar_symbol_get_data_length(symbol)
                    )
                    symbols.append(symbol_from_bytes(raw))
                symbol = zbar.zbar_symbol_next(symbol)
            return symbols
        finally:
            zbar.zbar_image_destroy(image)
            del grey

    def close(self) -> None:
        """Free the zbar scanner; idempotent."""
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            self._zbar.zbar_image_scanner_destroy(scanner)


def make_decoder(name: DecoderName) -> Decoder:
    """The decoder a unit's config names: ``zxing`` or ``zbar``."""
    if name == "zxing":
        return ZxingDecoder()
    if name == "zbar":
        return ZbarDecoder()
    raise ConfigError(f"decoder: unknown decoder {name!r}, choose 'zxing' or 'zbar'")
