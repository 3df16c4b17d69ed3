"""The error a trial-config value raises: the dotted key, what was received, what is allowed.

>>> str(ConfigError("model.depth", 21, "6·D+2"))
'model.depth: expected 6·D+2, received 21'
"""

from __future__ import annotations

from typing import Any

from bnsweep.base.text import shorten


class ConfigError(ValueError):
    """A trial config value is not allowed. ``key`` is the dotted key, e.g. ``model.depth``."""

    def __init__(self, key: str, received: Any, allowed: str) -> None:
        self.key, self.received, self.allowed = key, received, allowed
        super().__init__(f"{key}: expected {allowed}, received {shorten(received)}")  # one line, even for 1e300
