"""Is a host this machine? The one rule for "plain transport is fine here"."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """True for an address or name that never leaves this machine (127.0.0.0/8, ::1,
    localhost): plain MQTT or HTTP to it crosses no network."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
