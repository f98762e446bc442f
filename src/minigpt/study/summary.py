"""The summary paragraph, computed from the numbers (never written by hand).

Two passes in one: the objective's `summary` registers every comparison it will word in a
`Family` and returns its sentences as strings or as callables; Holm's correction then runs
over the whole family, and only after that are the callables worded. So "ahead of ... beyond
noise" always means: the hierarchical bootstrap over seeds and items, Holm-corrected over
every comparison this summary makes. With one seed no comparison has a p-value, and every
sentence describes without ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..text import plural
from .stats import Family, Items

Part = str | Callable[[], str]


def join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def mult(length: int, L: int) -> str:
    m = length / L
    if m == 1:
        return "L"
    return f"{m:g}L" if abs(m - round(m)) < 1e-9 or m < 1 else f"{length} tokens"


def n_seeds(results: dict[str, Any]) -> int:
    return len(results["study"]["seeds"])


def noise_words(results: dict[str, Any], family: Family) -> str:
    m = sum(1 for c in family.comparisons.values() if c.p is not None)
    return (f"beyond noise (paired over {n_seeds(results)} seeds and the evaluation items: "
            f"hierarchical-bootstrap error, Student's t, Holm-corrected over "
            f"{plural(m, 'comparison')})")


def rank(results: dict[str, Any], family: Family, key: str, scores: list[tuple[str, float]],
         items: Callable[[str], Items], fmt: str, what: str) -> Part:
    """A ranking sentence for `scores` sorted best first. With one seed it lists the values and
    says they are not ranked; with seeds it names who is behind the best beyond noise."""
    if len(scores) == 1:
        p, v = scores[0]
        return f"{what}: {p} {v:{fmt}}."
    values = ", ".join(f"{p} {v:{fmt}}" for p, v in scores)
    if n_seeds(results) < 2:
        return f"{what}: {values} (one seed: described, not ranked)."
    best = scores[0][0]
    keys = {p: family.add(f"{key}:{best}-{p}", items(best), items(p)).key
            for p, _ in scores[1:]}

    def word() -> str:
        val = dict(scores)
        ahead = [p for p in keys if family.differs(keys[p])]
        tied = [p for p in keys if p not in ahead]
        s = f"{what}, {best} ({val[best]:{fmt}}) is best"
        if ahead:
            s += (f", ahead of {join([f'{p} ({val[p]:{fmt}})' for p in ahead])} "
                  f"{noise_words(results, family)}")
        if tied:
            s += (f"{';' if ahead else ','} {join([f'{p} ({val[p]:{fmt}})' for p in tied])} "
                  f"{'is' if len(tied) == 1 else 'are'} within noise of it")
        return s + "."

    return word


def fmt_stat(s: dict[str, Any], digits: int = 3, *, integer: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    if integer:
        text = f"{s['mean']:,.0f}"
        return text + (f" ± {s['std']:,.0f}" if s["n"] > 1 and s["std"] else "")
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")
