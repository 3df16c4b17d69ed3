"""Text for terminals, errors and papers: one received value shortened, control characters escaped,
parameter counts the way papers print them.

>>> shorten(10 ** 300)[-16:], format_count(272474), printable("a\\x1b[2Jb")
('(301 characters)', '272K', 'a\\\\x1b[2Jb')
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any


def shorten(value: Any, *, limit: int = 80) -> str:
    """``repr(value)`` on one readable line: a long one (a 300-digit number, a huge list) keeps its start
    and end and says how long it was."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    return f"{shown[:40]}…{shown[-10:]} ({len(shown)} characters)"


def printable(text: str) -> str:
    """One terminal line: newlines, escape sequences and other control characters (from a spec's keys or
    values, a file name...) are shown escaped, never acted on."""
    out = []
    for c in text:
        if c.isprintable() or c == " ":
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cs") or ord(c) < 0x20:
            out.append(c.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:  # format / private-use / unassigned (e.g. bidi overrides, zero-width): escaped too
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return "".join(out)


def format_count(n: float | int | None) -> str:
    """Parameter counts the way papers print them: 650, 1.6K, 272K, 1.7M, 2.1B."""
    if n is None or (isinstance(n, float) and math.isnan(n)) or type(n).__name__ == "NAType":  # pandas.NA
        return "–"
    x = float(n)
    sign, x = ("-" if x < 0 else ""), abs(x)
    if round(x) < 1000:
        return f"{sign}{round(x)}"
    for unit, scale in (("K", 1e3), ("M", 1e6), ("B", 1e9), ("T", 1e12)):
        v = x / scale
        if round(v, 1) < 10:
            text = f"{v:.1f}"
        elif round(v) < 1000 or unit == "T":
            text = f"{round(v)}"
        else:
            continue
        if text.endswith(".0"):
            text = text[:-2]
        return f"{sign}{text}{unit}"
    raise AssertionError("unreachable")
