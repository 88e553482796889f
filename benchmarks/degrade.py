"""The degraded set: segno-rendered door codes spoilt the way cameras and hands spoil them.

Every image comes from a fixed seed, so every run (and every decoder within a run)
sees the same pixels. Strengths are chosen to be what a door camera meets on a bad
day (a card held at an angle, a phone screen with a reflection, a dim corridor),
not what no decoder could read; `KINDS` says each range in module units where that
is what matters (a module is one QR cell, 3 to 5 px here).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.scenes import code_texts
from doorscan.synthetic import render_frame

__all__ = ["KINDS", "Sample", "degraded_set"]

SIZE = (640, 480)
BACKGROUND = 150


@dataclass(frozen=True)
class Sample:
    """One degraded frame and the exact text it must read as."""

    kind: str
    code_kind: str
    expected: str
    frame: np.ndarray
    params: str


def _blur(img: Image.Image, rng: random.Random, scale: int, mild: bool) -> tuple[Image.Image, str]:
    # Out of focus by 0.15-0.45 of a module (mild: up to 0.25).
    radius = rng.uniform(0.15, 0.25 if mild else 0.45) * scale
    return img.filter(ImageFilter.GaussianBlur(radius)), f"blur radius {radius:.2f} px"


def _noise(img: Image.Image, rng: random.Random, scale: int, mild: bool) -> tuple[Image.Image, str]:
    # Sensor noise of a dim scene: sigma 12-40 grey levels (mild: 8-18).
    sigma = rng.uniform(8, 18) if mild else rng.uniform(12, 40)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, sigma, (img.height, img.width))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), f"noise sigma {sigma:.0f}"


def _rotation(
    img: Image.Image, rng: random.Random, scale: int, mild: bool
) -> tuple[Image.Image, str]:
    # A third each: small tilts, near a right angle (card upside down or sideways), anything.
    pick = rng.random()
    if pick < 1 / 3:
        angle = rng.uniform(-15, 15)
    elif pick < 2 / 3:
        angle = rng.choice((90, 180, 270)) + rng.uniform(-10, 10)
    else:
        angle = rng.uniform(0, 360)
    rotated = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=BACKGROUND)
    return rotated, f"rotated {angle:.1f}°"


def _perspective_coeffs(
    src: list[tuple[float, float]], dst: list[tuple[float, float]]
) -> list[float]:
    """PIL's 8 perspective coefficients mapping output points `dst` to input points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(rows), np.array(rhs))]


def _perspective(
    img: Image.Image, rng: random.Random, scale: int, mild: bool
) -> tuple[Image.Image, str]:
    # A card tilted away: one edge shortened by 10-40 % (mild: 5-20 %), corners jittered.
    w, h = img.size
    shrink = rng.uniform(0.05, 0.2) if mild else rng.uniform(0.1, 0.4)
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]  # tl, tr, br, bl
    side = rng.randrange(4)  # which edge leans away: top, right, bottom, left
    cx, cy = w / 2, h / 2
    moved = []
    for i, (x, y) in enumerate(corners):
        on_side = i in (side, (side + 1) % 4)
        fx = 1 - shrink if on_side and side in (0, 2) else 1.0
        fy = 1 - shrink if on_side and side in (1, 3) else 1.0
        jitter = rng.uniform(-0.02, 0.02) * w
        moved.append((cx + (x - cx) * fx + jitter, cy + (y - cy) * fy + jitter))
    coeffs = _perspective_coeffs(corners, moved)
    warped = img.transform(
        img.size,
        Image.Transform.PERSPECTIVE,
        coeffs,
        Image.Resampling.BILINEAR,
        fillcolor=BACKGROUND,
    )
    return warped, f"edge {('top', 'right', 'bottom', 'left')[side]} shortened {shrink:.0%}"


def _low_contrast(
    img: Image.Image, rng: random.Random, scale: int, mild: bool
) -> tuple[Image.Image, str]:
    # Black and white only 25-60 grey levels apart (mild: 50-90), at a dim or bright level.
    spread = rng.uniform(50, 90) if mild else rng.uniform(25, 60)
    level = rng.uniform(50, 200)
    pixels = np.asarray(img, dtype=np.float32)
    out = level + (pixels - 127.5) / 255 * spread
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), (
        f"contrast {spread:.0f} levels around {level:.0f}"
    )


def _glare(img: Image.Image, rng: random.Random, scale: int, mild: bool) -> tuple[Image.Image, str]:
    # A lamp reflected on a phone screen or laminated card: a bright blob on the code,
    # 10-25 % of the frame's height across, up to +230 levels (mild: +80-140).
    w, h = img.size
    sigma = rng.uniform(0.1, 0.25) * h / 2
    peak = rng.uniform(80, 140) if mild else rng.uniform(100, 230)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * h
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    ys, xs = np.mgrid[0:h, 0:w]
    blob = peak * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    out = np.clip(np.asarray(img, dtype=np.float32) + blob, 0, 255).astype(np.uint8)
    return Image.fromarray(out), f"glare +{peak:.0f} sigma {sigma:.0f} px"


_Transform = Callable[[Image.Image, random.Random, int, bool], tuple[Image.Image, str]]

_SINGLE: dict[str, _Transform] = {
    "blur": _blur,
    "noise": _noise,
    "rotation": _rotation,
    "perspective": _perspective,
    "low contrast": _low_contrast,
    "glare": _glare,
}


def _combined(
    img: Image.Image, rng: random.Random, scale: int, mild: bool
) -> tuple[Image.Image, str]:
    # Three milder spoilers at once, applied in the order light meets the lens: geometry
    # first, then light, then optics, then the sensor.
    order = ["rotation", "perspective", "glare", "low contrast", "blur", "noise"]
    chosen = set(rng.sample(order, 3))
    said = []
    for name in order:
        if name in chosen:
            img, what = _SINGLE[name](img, rng, scale, True)
            said.append(what)
    return img, "; ".join(said)


KINDS: dict[str, _Transform] = {**_SINGLE, "combined": _combined}
"""Every kind of degradation in the set, in report order."""


def degraded_set(per_kind: int, seed: int = 2022) -> Iterator[Sample]:
    """`per_kind` frames for each of `KINDS` (and a clean control), generated lazily."""
    texts = code_texts(per_kind * (len(KINDS) + 1), seed=seed)
    rng = random.Random(seed)
    index = 0
    for kind in ["clean", *KINDS]:
        for _ in range(per_kind):
            code_kind, text = texts[index]
            index += 1
            scale = rng.choice((3, 4, 5))
            # Centred, so that rotation and perspective keep the whole code in view.
            frame = render_frame(text, size=SIZE, scale=scale, background=BACKGROUND)
            img = Image.fromarray(frame)
            if kind == "clean":
                params = "none"
            else:
                img, params = KINDS[kind](img, rng, scale, False)
            yield Sample(kind, code_kind, text, np.asarray(img, dtype=np.uint8), params)
