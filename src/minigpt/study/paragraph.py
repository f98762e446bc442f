"""The summary paragraph, computed from the numbers (never written by hand): the objective's
sentences on the encodings trained at L, their cost, and the context-extension variants'
(extension.py), each registered in one `Family` and worded only after Holm's correction
(see summary.py for the two passes)."""

from __future__ import annotations

from typing import Any

from .extension import summary_parts
from .stats import Family, Items
from .summary import Part, join, n_seeds, noise_words
from .variants import encodings_only


def summarize(results: dict[str, Any], objective: Any) -> dict[str, Any]:
    """One paragraph of findings computed from the numbers, the findings as data, and every
    comparison made (with its raw and Holm-adjusted p-value)."""
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
