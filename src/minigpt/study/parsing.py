"""Parsing the study's list settings (encodings, lengths)."""

from __future__ import annotations

import math

from ..errors import ConfigError


def parse_list(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else str(text).split(",")
    return [s.strip() for s in items if s.strip()]


def parse_lengths(spec: str | list[str], L: int) -> list[int]:
    """'1x,2x,4x,8x' (multiples of L) or '64,128,256' (tokens) -> sorted token lengths,
    always including L itself."""
    out = {L}
    for item in parse_list(spec):
        try:
            if item.lower().endswith("x"):
                mult = float(item[:-1])
                n = mult * L
                if not (mult > 0 and math.isfinite(n) and abs(n - round(n)) < 1e-9):
                    raise ValueError
                out.add(round(n))
            else:
                n = int(item)
                if n < 1:
                    raise ValueError
                out.add(n)
        except ValueError:
            raise ConfigError(
                f"--lengths: {item!r} is neither a multiple of L like 2x (giving a whole number "
                f"of tokens with L = {L}) nor a positive token count.") from None
    return sorted(out)
