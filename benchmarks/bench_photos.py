"""Success rate on the real photographed codes in ``../shared/corpus/qr-photos/``.

139 phone photos (prints, T-shirts, screens, uneven light) with byte-exact expected
texts. Readers: the project's step with zxing and with zbar, a bare
``zxingcpp.read_barcodes`` and a bare ``pyzbar.decode``, each with every default, on
the full image. Goal: the project's zxing step reads at least as many as
bare zxing-cpp, with no wrong decode. Only 24 distinct payloads: the rate is
robustness to photography, not 139 independent codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zxingcpp
from PIL import Image
from pyzbar import pyzbar

from benchmarks.report import Figure, Result
from device.decoders import ZbarDecoder, ZxingDecoder

__all__ = ["CORPUS", "run"]

SUBJECT = "Decode success: real photos"
# In CI the shared folder is a sibling of the clone, as it is in the sandbox.
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "qr-photos"


def _pyzbar_texts(frame: np.ndarray) -> list[str | None]:
    # pyzbar hands back bytes after zbar's own charset guess; UTF-8 is how the corpus is kept.
    return [r.data.decode("utf-8", errors="replace") for r in pyzbar.decode(frame)]


def run(quick: bool) -> Result:
    manifest_path = CORPUS / "manifest.json"
    if not manifest_path.is_file():
        return Result([], {"skipped": str(CORPUS)}, f"Not measured: no corpus at {CORPUS}.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if quick:
        manifest = manifest[::10]
    zxing, zbar = ZxingDecoder(), ZbarDecoder()
    readers: dict[str, Callable[[np.ndarray], list[str | None]]] = {
        "project zxing": lambda f: [s.text for s in zxing.decode(f)],
        "project zbar": lambda f: [s.text for s in zbar.decode(f)],
        "bare zxing-cpp": lambda f: [b.text for b in zxingcpp.read_barcodes(f)],
        "bare pyzbar": _pyzbar_texts,
    }
    read = dict.fromkeys(readers, 0)
    wrong: dict[str, list[str]] = {r: [] for r in readers}
    missed: dict[str, list[str]] = {r: [] for r in readers}
    try:
        for entry in manifest:
            with Image.open(CORPUS / entry["file"]) as image:
                grey = np.asarray(image.convert("L"))
            for reader, decode in readers.items():
                texts = decode(grey)
                if entry["expected"] in texts:
                    read[reader] += 1
                else:
                    missed[reader].append(entry["file"])
                if any(t != entry["expected"] for t in texts):
                    wrong[reader].append(entry["file"])
    finally:
        zxing.close()
        zbar.close()
    images = len(manifest)
    figures = []
    for reader in readers:
        if reader == "bare zxing-cpp":
            continue
        goal = reader == "project zxing"
        figures.append(
            Figure(
                SUBJECT,
                f"{reader}: photos read",
                100 * read[reader] / images,
                "%",
                100 * read["bare zxing-cpp"] / images,
                "bare zxing-cpp",
                "≥ bare zxing-cpp, 0 wrong" if goal else "",
                (read[reader] >= read["bare zxing-cpp"] and not wrong[reader]) if goal else None,
                f"{read[reader]} of {images} read, {len(wrong[reader])} wrong"
                f" (bare zxing-cpp {read['bare zxing-cpp']}, {len(wrong['bare zxing-cpp'])} wrong)",
            )
        )
    raw: dict[str, Any] = {
        "images": images,
        "read": read,
        "wrong": wrong,
        "missed": missed,
    }
    return Result(figures, raw, __doc__.split("\n", 1)[1])
