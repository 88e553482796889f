"""The fleet's revoked visitor cards, as this unit last heard them: kept across restarts.

Provisioning publishes the whole list retained (`doorscan.wire.CardRevocations`); the
broker hands it over at every connect. The unit applies a list only if its version is
above the one it holds (a late or repeated copy never undoes a revocation), writes it to
its small state file first, so a unit that restarts offline still refuses a revoked
card, then swaps it into the `CardKeyring` the scanner reads.

    >>> revocations = CardRevocationList(keyring, state)    # doctest: +SKIP
    >>> revocations.receive(payload)                         # from MqttSync
    True
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any, Protocol

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.wire import CardRevocations, decode_message

__all__ = ["STATE_KEY", "CardRevocationList"]

log = logging.getLogger(__name__)
STATE_KEY = "card_revocations"


class _State(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...


class CardRevocationList:
    def __init__(self, keyring: CardKeyring, state: _State) -> None:
        self._keyring = keyring
        self._state = state
        saved = state.get(STATE_KEY) or {}
        self.version = int(saved.get("version", 0))
        revoked = {card: date.fromisoformat(day) for card, day in saved.get("revoked", {}).items()}
        keyring.set_revoked(revoked)

    def receive(self, payload: bytes) -> bool:
        """Apply a newer list; False for an older, equal or unreadable one (logged)."""
        if not payload:
            return False  # a cleared retained message would un-revoke every card
        try:
            revocations = decode_message(payload, CardRevocations)
        except Refusal as refusal:
            log.warning("card revocation list refused, the held one stays: %s", refusal.reason)
            return False
        if revocations.version <= self.version:
            return False
        revoked = revocations.by_card()
        self._state.set(
            STATE_KEY,
            {
                "version": revocations.version,
                "revoked": {card: day.isoformat() for card, day in revoked.items()},
            },
        )
        self._keyring.set_revoked(revoked)
        self.version = revocations.version
        log.info("card revocations version %d: %d cards", revocations.version, len(revoked))
        return True
