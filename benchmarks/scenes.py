"""The codes and frames the benchmarks show the decoders, all from fixed seeds.

Texts are the three kinds a door sees: a CCCD card, the national health QR and a
signed doorscan visitor card (signed with a key made from a fixed seed: Ed25519
signatures are deterministic, so the set is the same every run).
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorscan.cards import CardSigner
from doorscan.synthetic import cccd_text, health_text, make_people, render_frame
from doorscan.timefmt import vietnam_day

__all__ = ["code_texts", "code_frame", "doorway_frame", "card_signer"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def card_signer() -> CardSigner:
    """A card issuer whose key comes from a fixed seed (benchmarks only, never a real key)."""
    seed = hashlib.sha256(b"doorscan benchmark card key").digest()
    return CardSigner(Ed25519PrivateKey.from_private_bytes(seed))


def code_texts(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (kind, text) pairs cycling through cccd, health and card, distinct people."""
    rng = random.Random(seed)
    signer = card_signer()
    people = make_people(count, seed=seed)
    texts: list[tuple[str, str]] = []
    for i, person in enumerate(people):
        kind = ("cccd", "health", "card")[i % 3]
        if kind == "cccd":
            texts.append((kind, cccd_text(person)))
        elif kind == "health":
            texts.append((kind, health_text(person, masked=rng.random() < 0.3)))
        else:
            card_id = "".join(rng.choice(_CROCKFORD) for _ in range(10))
            # Issued today: a card carries its expiry, and the latency bench's scanner
            # runs on the real clock (a fixed 2022 date expired and refused every card).
            texts.append((kind, signer.issue(person.name, vietnam_day(datetime.now(UTC)), card_id)))
    return texts


def doorway_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A frame with no code that is not trivially flat: a lit wall, a dark door, sensor noise.

    A uniform grey frame would flatter every decoder (nothing to binarise); a camera at
    a door sees edges, gradients and noise even when nobody stands there.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    frame = 110 + 70 * x[None, :] * (1 - 0.5 * y)  # light falling off across the wall
    frame[int(height * 0.15) :, int(width * 0.35) : int(width * 0.65)] = 45  # the doorway
    frame[int(height * 0.1) : int(height * 0.15), int(width * 0.3) : int(width * 0.7)] = 200
    frame = frame + rng.normal(0, 3, size=(height, width))  # a Pi camera in fair light
    grey: np.ndarray = np.clip(frame, 0, 255).astype(np.uint8)
    return grey


def code_frame(text: str, size: tuple[int, int]) -> np.ndarray:
    """A card held up in the middle of a frame of `size`, 4 px per module (6 at 1280×720)."""
    scale = 6 if size[0] >= 1280 else 4
    return render_frame(text, size=size, scale=scale)
