"""Waiting for something another process or thread will do, without sleeping blind."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Poll `predicate` every 50 ms until it holds or `timeout_s` passes; return its last value.

    The timeout bounds a hang, it is not a performance claim: tests assert the result,
    never how long it took.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
