"""Wording shared by the rooms that write sentences for people (the study, its report)."""

from __future__ import annotations


def plural(k: int, word: str) -> str:
    """`3 seeds`, `1 seed`: a count with its noun (regular plurals only)."""
    return f"{k} {word}{'' if k == 1 else 's'}"
