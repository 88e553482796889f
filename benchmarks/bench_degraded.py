"""Success rate on the degraded set, per kind of damage, with every wrong decode counted.

Readers: the project's step with each decoder a unit can be configured with
(``ZxingDecoder``, ``ZbarDecoder``), and a bare ``zxingcpp.read_barcodes(frame)`` with
every default as the baseline. A frame is *read* when the expected text is among
what came back, *wrong* when anything else came back (a garbled text, a phantom
code), a *miss* otherwise. Goal: at least 98.5 % read over the degraded
kinds, with no wrong decode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import zxingcpp

from benchmarks.degrade import BACKGROUND, KINDS, SIZE, degraded_set
from benchmarks.report import Figure, Result
from device.decoders import ZbarDecoder, ZxingDecoder

__all__ = ["run"]

SUBJECT = "Decode success: degraded set"
GOAL_RATE = 98.5


def _bare_zxing(frame: np.ndarray) -> list[str | None]:
    return [barcode.text for barcode in zxingcpp.read_barcodes(frame)]


def _where_missed(by_kind: dict[str, Counter[str]], kinds: list[str]) -> str:
    missed = [f"{k} {by_kind[k]['missed']}" for k in kinds if by_kind[k]["missed"]]
    return f"; missed by kind: {', '.join(missed)}" if missed else ""


def run(quick: bool) -> Result:
    per_kind = 4 if quick else 40
    zxing, zbar = ZxingDecoder(), ZbarDecoder()
    readers: dict[str, Callable[[np.ndarray], list[str | None]]] = {
        "project zxing": lambda f: [s.text for s in zxing.decode(f)],
        "project zbar": lambda f: [s.text for s in zbar.decode(f)],
        "bare zxing-cpp": _bare_zxing,
    }
    counts: dict[str, dict[str, Counter[str]]] = {r: {} for r in readers}
    wrong_examples: list[dict[str, str]] = []
    try:
        for sample in degraded_set(per_kind):
            for reader, decode in readers.items():
                texts = decode(sample.frame)
                tally = counts[reader].setdefault(sample.kind, Counter())
                tally["images"] += 1
                others = [t for t in texts if t != sample.expected]
                if sample.expected in texts:
                    tally["read"] += 1
                else:
                    tally["missed"] += 1
                if others:
                    tally["wrong"] += 1
                    if len(wrong_examples) < 20:
                        wrong_examples.append(
                            {
                                "reader": reader,
                                "kind": sample.kind,
                                "params": sample.params,
                                "expected": sample.expected,
                                "got": repr(others),
                            }
                        )
    finally:
        zxing.close()
        zbar.close()

    figures: list[Figure] = []
    kinds = list(KINDS)

    def rate(reader: str, selected: list[str]) -> tuple[float, int, int, int]:
        images = sum(counts[reader][k]["images"] for k in selected)
        read = sum(counts[reader][k]["read"] for k in selected)
        wrong = sum(counts[reader][k]["wrong"] for k in selected)
        return 100 * read / images, read, images, wrong

    for reader in ("project zxing", "project zbar"):
        value, read, images, wrong = rate(reader, kinds)
        base, base_read, _, base_wrong = rate("bare zxing-cpp", kinds)
        figures.append(
            Figure(
                SUBJECT,
                f"{reader}: read, all degraded kinds",
                value,
                "%",
                base,
                "bare zxing-cpp",
                f"≥ {GOAL_RATE} %, 0 wrong",
                value >= GOAL_RATE and wrong == 0,
                f"{read} of {images} read, {wrong} wrong (bare zxing-cpp: {base_read} read,"
                f" {base_wrong} wrong)" + _where_missed(counts[reader], kinds),
            )
        )
    for kind in ["clean", *kinds]:
        for reader in ("project zxing", "project zbar"):
            value, read, images, wrong = rate(reader, [kind])
            base, *_ = rate("bare zxing-cpp", [kind])
            figures.append(
                Figure(
                    SUBJECT,
                    f"{reader}: read, {kind}" + (" (control)" if kind == "clean" else ""),
                    value,
                    "%",
                    base,
                    "bare zxing-cpp",
                    note=f"{wrong} wrong" if wrong else "",
                )
            )
    raw: dict[str, Any] = {
        "per_kind": per_kind,
        "counts": {r: {k: dict(c) for k, c in by_kind.items()} for r, by_kind in counts.items()},
        "wrong_examples": wrong_examples,
    }
    text = (
        __doc__.split("\n", 1)[1]
        + f"\nThe set: {per_kind} frames per kind ({per_kind * len(kinds)} degraded, plus"
        f" {per_kind} clean as a control), {SIZE[0]}×{SIZE[1]} grey, background {BACKGROUND},"
        " CCCD, health and signed visitor-card texts in turn, codes at 3, 4 or 5 px per"
        " module, generated from a fixed seed by `benchmarks/degrade.py` (which gives each"
        " kind's range of strengths). Per-kind rows are context; the goal is on the overall"
        " rate."
    )
    return Result(figures, raw, text)
