"""What is wrong with a config or a spec: ``ConfigError`` (one trial-config value: the dotted key, what was received,
what is allowed) and ``Problem`` / ``SpecError`` (everything wrong with a spec, each with its file and line).

>>> str(ConfigError("model.depth", 21, "6·D+2"))
'model.depth: expected 6·D+2, received 21'
>>> str(Problem("sweeps/x.yaml", 12, "parameters.lr.min", "expected a number > 0, received -0.1"))
'sweeps/x.yaml:12 parameters.lr.min: expected a number > 0, received -0.1'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bnsweep.base.text import shorten


class ConfigError(ValueError):
    """A trial config value is not allowed. ``key`` is the dotted key, e.g. ``model.depth``."""

    def __init__(self, key: str, received: Any, allowed: str) -> None:
        self.key, self.received, self.allowed = key, received, allowed
        super().__init__(f"{key}: expected {allowed}, received {shorten(received)}")  # one line, even for 1e300

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigError, (self.key, self.received, self.allowed))

    def rekey(self, old: str, new: str) -> ConfigError:
        """The same error under another dotted prefix (``lr_schedule.gamma`` → ``search.lr_schedule.gamma``)."""
        key = new + self.key[len(old):] if self.key == old or self.key.startswith(old + ".") else self.key
        return ConfigError(key, self.received, self.allowed)


class ConfigErrors(ValueError):
    """Several ``ConfigError`` at once, from one check of a section (keys relative to the section)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: ``sweeps/x.yaml:12 parameters.lr.min: expected a number > 0, received -0.1``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(Exception):
    """A spec is invalid; ``problems`` lists everything found, ``str()`` shows one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray) with its problems intact
        return (SpecError, (self.problems,))


def suggestion(received: Any, choices: Iterable[str]) -> str:
    """``", did you mean 'tpe'?"`` for a near miss among ``choices`` (or ``""``)."""
    if not isinstance(received, str):
        return ""
    choices = list(choices)
    close = difflib.get_close_matches(received, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(received) >= 3 and c.startswith(received)][:1]
    return f", did you mean {close[0]!r}?" if close else ""


def message(e: ConfigError) -> str:
    """A problem's text for ``e``: what is allowed, what was received, and a near miss among the choices.

    >>> message(ConfigError("method", "tpee", "one of grid, random, tpe, cmaes"))
    "expected one of grid, random, tpe, cmaes, received 'tpee', did you mean 'tpe'?"
    """
    text = f"expected {e.allowed}, received {shorten(e.received)}"
    if e.allowed.startswith("one of "):
        text += suggestion(e.received, e.allowed[len("one of "):].split(", "))
    return text
