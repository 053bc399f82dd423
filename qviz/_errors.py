"""Helpers for error messages that say what was wrong, what was expected and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` of ``choices`` that look like ``name``."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        # a substring match catches "query" -> "encoder.layer.0.attention.self.query"
        found = [c for c in choices if name and name in c][:n]
    return found


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " Did you mean ...?" suffix, or an empty string when nothing is close."""
    found = close_matches(name, choices)
    if not found:
        return ""
    return " Did you mean " + " or ".join(repr(f) for f in found) + "?"
