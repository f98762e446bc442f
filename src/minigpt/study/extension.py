"""Reading the variants of the rope runs (`compare --extend`, see variants.py) in the report:
at each factor s, a ranking of the encodings and that factor's variants beyond noise, each
against the objective's reference (lm: the window of L of the same weights; tasks: the best
input-blind baseline), what the fine-tunes cost, a table and extension.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import color, legend_outside, mark_L, plt, save
from .registry import get_objective
from .summary import fmt_stat, join, noise_words, rank
from .variants import EXTENDS, METHOD_COLOURS, is_variant

def _groups(results: dict[str, Any], objective: Any) -> list[tuple[float, int, list[Any]]]:
    """Per factor s: (s, the evaluation length read for it, the encodings + its variants)."""
    ext, L = results["study"]["extension"], results["study"]["block_size"]
    plain = [a for a in results["aggregates"] if not is_variant(a)]
    out = []
    for s in ext["factors"]:
        n = objective.length_within(results, round(s * L))
        if n is not None:
            out.append((s, n, plain + [a for a in results["aggregates"]
                                       if is_variant(a) and a["extension"]["factor"] == s]))
    return out


def summary_parts(results: dict[str, Any], objective: Any, family: Any,
                  findings: dict[str, Any]) -> list[Any]:
    """Sentences on the variants: at each factor's length, who is best beyond noise, and
    each against the objective's reference (lm: the window of L of the same weights; tasks:
    the best input-blind baseline); then what the fine-tunes cost."""
    if not results["study"].get("extension"):
        return []
    ext, L = results["study"]["extension"], results["study"]["block_size"]
    parts: list[Any] = [
        f"Context extension of the rope runs ({len(ext['variants'])} variants: each method "
        f"at each factor s, zero-shot and after {ext['finetune_steps']} fine-tune steps at "
        "s x L)."]
    found: dict[str, Any] = {}
    findings["extension"] = found
    for s, n, group in _groups(results, objective):
        scores = [(a["pos"], st["mean"]) for a in group
                  if (st := objective.score_at(a, n)) is not None]
        if not scores:
            continue
        scores.sort(key=lambda x: x[1], reverse=objective.higher_is_better)
        found[f"{s:g}"] = {"length": n, objective.score_name: dict(scores), "best": scores[0][0]}
        parts.append(rank(results, family, f"ext{s:g}@{n}", scores,
                          lambda p, n=n: objective.score_items(results, p, n),
                          objective.score_fmt, f"At s = {s:g} (length {n}; L = {L}), "
                          f"{objective.score_name}"))
        if len(results["study"]["seeds"]) > 1:
            parts.append(_verdicts(results, objective, family, found[f"{s:g}"], s, n, scores))
    parts.append(_cost_sentence(results))
    return parts


def _verdicts(results: dict[str, Any], objective: Any, family: Any, found: dict[str, Any],
              s: float, n: int, scores: list[tuple[str, float]]) -> Any:
    """Every contender at s x L against its reference (objective.reference), worded after
    Holm: better beyond noise, within noise, or worse."""
    keys = {}
    for pos, _ in scores:
        ref = objective.reference(results, pos, n)
        if ref is not None:
            items, value = ref
            keys[pos] = (family.add(f"ext{s:g}@{n}:{pos}-reference",
                                    objective.score_items(results, pos, n), items).key, value)

    def word() -> str:
        f, val = objective.score_fmt, dict(scores)
        groups: dict[str, list[str]] = {"better": [], "within noise": [], "worse": []}
        verdicts = {}
        for pos, (key, value) in keys.items():
            diff = family.comparisons[key].diff
            better = diff > 0 if objective.higher_is_better else diff < 0
            g = ("better" if better else "worse") if family.differs(key) else "within noise"
            verdicts[pos] = g
            groups[g].append(f"{pos} ({val[pos]:{f}} vs {value:{f}})")
        found["against_reference"] = verdicts
        said = [f"{g}: {join(names)}" for g, names in groups.items() if names]
        return (f"At s = {s:g}, each against {objective.reference_name} "
                f"{noise_words(results, family)}, {'; '.join(said)}.") if said else ""

    return word


def _cost_sentence(results: dict[str, Any]) -> str:
    tuned = [a for a in results["aggregates"] if is_variant(a) and a["extension"]["finetune_steps"]]
    base = next((a for a in results["aggregates"] if a["pos"] == EXTENDS), None)
    if not tuned or base is None:
        return ""
    by_s: dict[float, list[float]] = {}
    for a in tuned:
        by_s.setdefault(a["extension"]["factor"], []).append(
            a["extension"]["finetune_time_s"]["mean"])
    each = "; ".join(f"at {s:g}L {sum(v) / len(v):.0f} s" for s, v in sorted(by_s.items()))
    steps = tuned[0]["extension"]["finetune_steps"]
    return (f"A fine-tune of {steps} steps took, per run and averaged over methods and seeds, "
            f"{each}, against {base['train_time_s']['mean']:.0f} s to train the rope run at L "
            f"({base['steps']['mean']:.0f} steps).")


def table(results: dict[str, Any], objective: Any) -> tuple[list[str], list[list[str]]]:
    lengths = results["study"]["lengths"]
    digits = int(objective.score_fmt.strip(".f"))
    head = ["contender", "method", "s", "fine-tune steps", "fine-tune time (s)",
            *[f"{objective.score_name} at {n}" for n in lengths]]
    rows = []
    for a in results["aggregates"]:
        e = a.get("extension")
        cost = (e and e["finetune_steps"]) and fmt_stat(e["finetune_time_s"], 1)
        rows.append([a["pos"], e["scaling"] if e else "trained at L",
                     f"{e['factor']:g}" if e else "", str(e["finetune_steps"]) if e else "",
                     cost or "", *[fmt_stat(st, digits) if (st := objective.score_at(a, n))
                                   else "n/a" for n in lengths]])
    return head, rows


def plot(results: dict[str, Any], path: Path) -> Path:
    """Per factor s: the objective's score against length for the encodings and the
    variants at s, with L and s x L marked."""
    objective = get_objective(results["study"]["task"])
    groups = _groups(results, objective)
    L = results["study"]["block_size"]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6.5 * max(1, len(groups)), 4.2),
                             squeeze=False)
    for ax, (s, _, group) in zip(axes[0], groups):
        for a in group:
            pts = [(n, st["mean"], st["std"] or 0.0) for n in results["study"]["lengths"]
                   if (st := objective.score_at(a, n)) is not None]
            if not pts:
                continue
            x, y, e = zip(*pts)
            ext = a.get("extension")
            tuned = bool(ext and ext["finetune_steps"])
            c = (plt.get_cmap("Dark2")(METHOD_COLOURS[ext["scaling"]]) if ext
                 else color(a["pos"]))  # a method keeps its colour; +ft is dashed
            ax.errorbar(x, y, yerr=e if len(results["study"]["seeds"]) > 1 else None,
                        fmt="s--" if tuned else "o-", color=c, label=a["pos"], capsize=2, ms=4)
        mark_L(ax, L, "L")
        ax.axvline(s * L, color="k", ls=":", lw=1, label=f"s x L ({s * L:g})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length")
        ax.set_ylabel(objective.score_name)
        ax.set_title(f"s = {s:g}")
        if objective.score_name == "perplexity":
            ax.set_yscale("log")
        legend_outside(ax)
    return save(fig, path)
