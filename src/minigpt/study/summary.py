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


def summarize(results: dict[str, Any], objective: Any) -> dict[str, Any]:
    """One paragraph of findings computed from the numbers, the findings as data, and every
    comparison made (with its raw and Holm-adjusted p-value)."""
    from .extension import encodings_only, summary_parts

    family = Family()
    trained_at_L = encodings_only(results)  # the variants of the rope runs read on their own
    parts, findings = objective.summary(trained_at_L, family)
    parts += cost_parts(trained_at_L, family, findings)
    parts += summary_parts(results, objective, family, findings)
    family.resolve()
    text = [p() if callable(p) else p for p in parts]
    untrained = sorted({row["untrained"] for a in results["aggregates"]
                        for row in a.get("length_ppl", []) + a.get("accuracy", [])
                        if row.get("untrained") and row.get("reason") is None})
    findings["untrained"] = untrained
    if untrained:
        text.append("Warning: some numbers use parameters that never received a gradient ("
                    + "; ".join(untrained) + "), so they measure initial values.")
    if n_seeds(results) == 1:
        text.append("With one seed this summary describes and never ranks: a bootstrap over "
                    "one trained model's evaluation items cannot see training noise; run "
                    "--seeds 3 or more for a ranking.")
    findings["comparisons"] = family.as_list()
    return {"text": " ".join(t for t in text if t), "findings": findings}


def cost_parts(results: dict[str, Any], family: Family, findings: dict[str, Any]) -> list[Part]:
    aggs = results["aggregates"]
    times = sorted((a["step_time_ms"]["mean"], a["pos"]) for a in aggs
                   if a["step_time_ms"]["mean"] is not None)
    counts = {a["pos"]: a["pos_params"]["mean"] for a in aggs}
    env = results.get("environment", {})
    shared = (f" ({env.get('jobs', 1)} runs at a time sharing the machine)"
              if env.get("jobs", 1) > 1 else "")
    parts: list[Part] = []
    if len(times) == 1 or (times and times[0][0] == times[-1][0]):
        parts.append(f"A steady-state training step took {times[0][0]:.1f} ms (median){shared}.")
    elif times:
        (t0, fast), (t1, slow) = times[0], times[-1]

        def step_items(pos: str) -> Items:
            return Items.of([[r["training"]["step_time_ms"]["median"] or 0.0]
                             for r in results["runs"] if r["pos"] == pos])

        lead = f"A steady-state training step took {t0:.1f} ms ({fast}) to {t1:.1f} ms ({slow})"
        if n_seeds(results) < 2:
            parts.append(f"{lead}{shared}; one seed: not compared.")
        else:
            key = family.add(f"step:{slow}-{fast}", step_items(slow), step_items(fast)).key

            def word() -> str:
                if family.differs(key):
                    findings["fastest"], findings["slowest"] = fast, slow
                    return (f"{lead}{shared}; {fast} is faster than {slow} "
                            f"{noise_words(results, family)}.")
                return f"{lead}{shared}: within noise of each other."

            parts.append(word)
    lo, hi = min(counts.values()), max(counts.values())
    if hi > lo:
        parts.append(f"The encodings add from {lo:,.0f} "
                     f"({join([p for p, v in counts.items() if v == lo])}) to {hi:,.0f} "
                     f"({join([p for p, v in counts.items() if v == hi])}) positional "
                     "parameters.")
    scale = [(a["pos"], a["pos_state"]["scale"]) for a in aggs if "scale" in a.get("pos_state", {})]
    for pos, s in scale:
        init = next(a["pos_state"].get("initial_scale") for a in aggs if a["pos"] == pos)
        parts.append(f"The {pos} scale ended at {s['mean']:.3g} (it started at "
                     f"{init['mean']:.3g}).")
    return parts
