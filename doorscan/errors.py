"""The exception root shared by every doorscan package.

Refusals of bad input are `Refusal` values that carry a short machine-readable
`code` and a human `reason`: callers count them, show them on the door, or write
them to a dead-letter table. They are never allowed to escape as stack traces.
"""

from __future__ import annotations

__all__ = ["DoorscanError", "Refusal", "ConfigError"]


class DoorscanError(Exception):
    """Base class of every error doorscan raises on purpose."""


class Refusal(DoorscanError, ValueError):
    """Input was refused; `code` names the rule it broke, `reason` says it for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ConfigError(DoorscanError, ValueError):
    """A configuration file or option is wrong; the message names the key."""
