"""Do the hub's keys open what the fleet sends? Compare them with the fleet's `FleetKeys`.

Units seal each scan to the hub's public sealing key and visitor cards are signed with
the fleet's card key; provisioning publishes both public halves as `FleetKeys`
(retained, `registry/fleet/keys`). A hub without the private half of that sealing key,
or without one of those card keys, dead-letters every such scan (``unsealable``,
``card_no_key``) while the doors light green. So the hub compares: when the message
arrives (`hub.ingest`), in ``doorscan-hub check`` and before ``serve`` starts, against
the copy the store kept (`hub.preflight`).

A key is named by its fingerprint (the first 16 characters of its base64url text), the
same text `provisioning publish` printed, so an operator can tell which file is which.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from doorscan.cards import CardKeyring
from doorscan.wire import FleetKeys, key_fingerprint, raw_key_text

__all__ = ["key_problems"]


def key_problems(
    fleet: FleetKeys,
    sealing_key: X25519PrivateKey | None,
    card_keys: CardKeyring | None,
) -> list[str]:
    """What in the hub's keys would dead-letter the fleet's scans; empty if nothing.

    Each problem names the key (its fingerprint), the setting that should hold it, and
    the fleet-home file it comes from (`provisioning.fleet` layout)."""
    problems = []
    if fleet.seal_public_key is not None:
        wanted = key_fingerprint(fleet.seal_public_key)
        if sealing_key is None:
            problems.append(
                f"no seal key: the fleet's units seal scans to the hub's public key {wanted}; "
                "set keys.seal_key (or --seal-key) to its private half, keys/hub-seal.key in "
                "the fleet home"
            )
        else:
            have = raw_key_text(sealing_key.public_key().public_bytes_raw())
            if have != fleet.seal_public_key:
                problems.append(
                    f"wrong seal key: it is the private half of {key_fingerprint(have)}, but the "
                    f"fleet's units seal to {wanted}; set keys.seal_key to keys/hub-seal.key "
                    "of the fleet home that published it"
                )
    trusted = set() if card_keys is None else {raw_key_text(k) for k in card_keys.public_keys()}
    for card_key in fleet.card_public_keys:
        if card_key not in trusted:
            problems.append(
                f"card key {key_fingerprint(card_key)} is not trusted: the fleet signs visitor "
                "cards with it; add its public key (keys/card-signing.pub.pem in the fleet "
                "home) to keys.card_keys (or --card-key)"
            )
    return problems
