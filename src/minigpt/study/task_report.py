"""The tasks' report parts and the readings they share with the summary: steps to
criterion, baselines, the accuracy and convergence tables and the accuracy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..text import plural
from .figures import color, legend_outside, mark_L, plt, save
from .objective import Table
from .stats import Items
from .summary import fmt_stat, join, n_seeds

IN, SEQ, DEP = "in distribution", "sequence past L", "dependency past L"


def steps_to(run: dict[str, Any]) -> int | None:
    """The step of the first convergence check at or above the criterion, or None."""
    checks = run["training"].get("checks", [])
    crit = run["training"].get("criterion")
    for c in checks:
        if crit is not None and c["val_accuracy"] >= crit:
            return c["step"]
    return None


def last_val(run: dict[str, Any]) -> float | None:
    checks = run["training"].get("checks", [])
    return checks[-1]["val_accuracy"] if checks else None


def _acc_at(agg: dict[str, Any], n: int) -> float | None:
    return next((r["accuracy"]["mean"] for r in agg["accuracy"] if r["length"] == n), None)


def acc_items(results: dict[str, Any], pos: str, n: int) -> Items:
    per_seed = []
    for r in results["runs"]:
        if r["pos"] == pos:
            row = next(x for x in r["task_accuracy"]["results"] if x["length"] == n)
            per_seed.append(row["per_instance"])
    return Items.of(per_seed)


def baseline_items(results: dict[str, Any], n: int) -> Items:
    """The best baseline's hits on the instances of length n, the same for every seed."""
    name, _ = best_baseline(results["study"], n)
    hits = results["study"]["baselines"][str(n)][name]["per_instance"]
    return Items.of([hits] * n_seeds(results))


def best_baseline(study: dict[str, Any], n: int) -> tuple[str, float]:
    b = study["baselines"][str(n)]
    name = max(b, key=lambda k: b[k]["accuracy"])
    return name, b[name]["accuracy"]


def _convergence(aggs: list[dict[str, Any]], steps: int) -> list[str]:
    done = [a for a in aggs if a["converged"] == a["seeds"]]
    rest = [a for a in aggs if a["converged"] < a["seeds"]]
    parts = []
    if done:
        parts.append("Converged (every seed): " + join([
            f"{a['pos']} ({_steps(a['steps_to_criterion'])} steps)" for a in done]) + ".")
    if rest:
        parts.append(
            "Did not converge, so not read past L: " + join([
                f"{a['pos']} ({a['converged']} of {plural(a['seeds'], 'seed')}; validation "
                f"accuracy {fmt_stat(a['val_accuracy'], 2)} after up to {steps} steps)"
                for a in rest])
            + ".")
    return parts


def _steps(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.0f}" + (f" ± {s['std']:.0f}" if s["n"] > 1 else "")


def _acc_cell(results: dict[str, Any], pos: str, row: dict[str, Any]) -> str:
    if row["accuracy"]["mean"] is None:
        return row["reason"] or "n/a"
    flag = " (untrained parameters)" if row.get("untrained") and row["reason"] is None else ""
    if row["accuracy"]["n"] > 1:
        return fmt_stat(row["accuracy"], 2) + flag
    run = next(r for r in results["runs"] if r["pos"] == pos)
    one = next(x for x in run["task_accuracy"]["results"] if x["length"] == row["length"])
    return f"{one['accuracy']:.2f} [{one['ci_low']:.2f}, {one['ci_high']:.2f}]" + flag


def _accuracy_table(results: dict[str, Any]) -> Table:
    study = results["study"]
    kinds = {k["length"]: k for k in study["length_kinds"]}
    short = {IN: "trained", SEQ: "seq > L", DEP: "dep > L"}
    head = ["encoding"] + [f"{n} ({short[kinds[n]['kind']]}, dep {kinds[n]['dependency']})"
                           for n in study["lengths"]]
    rows = []
    for a in results["aggregates"]:
        mark = "" if a["converged"] == a["seeds"] else " *"
        rows.append([a["pos"] + mark] + [_acc_cell(results, a["pos"], c) for c in a["accuracy"]])
    names = sorted({k for b in study["baselines"].values() for k in b})
    for name in names:
        rows.append([f"baseline: {name}"] + [f"{study['baselines'][str(n)][name]['accuracy']:.2f}"
                                             for n in study["lengths"]])
    return head, rows


def _convergence_table(results: dict[str, Any]) -> Table:
    head = ["run", "steps to criterion", "last validation accuracy", "steps trained"]
    rows = []
    for r in results["runs"]:
        s = steps_to(r)
        v = last_val(r)
        rows.append([r["name"], str(s) if s is not None else "did not converge",
                     f"{v:.3f}" if v is not None else "n/a", str(r["training"]["steps"])])
    return head, rows


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    study = results["study"]
    nmax, L = study["max_train_length"], study["block_size"]
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    aggs = results["aggregates"]
    for k, a in enumerate(aggs):
        run = next(r for r in results["runs"] if r["pos"] == a["pos"])
        dodge = 1 + 0.012 * (k - (len(aggs) - 1) / 2)  # tied points stay visible side by side
        pts = []
        for c, one in zip(a["accuracy"], run["task_accuracy"]["results"]):
            m = c["accuracy"]["mean"]
            if m is None:
                continue
            if a["seeds"] > 1:  # error bars: sample std over seeds
                lo = hi = c["accuracy"]["std"] or 0.0
            else:  # the 95% Wilson interval of the one seed
                # (clamped: records written before the interval's ends were exact)
                lo, hi = max(0.0, m - one["ci_low"]), max(0.0, one["ci_high"] - m)
            pts.append((c["length"] * dodge, m, lo, hi))
        if not pts:
            continue
        x, y, lo, hi = zip(*pts)
        label = a["pos"] + ("" if a["converged"] == a["seeds"] else " (not converged)")
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color=color(a["pos"]), capsize=3, label=label)
    base = [best_baseline(study, n)[1] for n in study["lengths"]]
    ax.plot(study["lengths"], base, color="black", ls="--", lw=1, label="best input-blind baseline")
    mark_L(ax, nmax, "longest trained")
    dep = [k["length"] for k in study["length_kinds"] if k["kind"] == DEP]
    if dep:
        ax.axvspan(min(dep) * 0.97, max(study["lengths"]) * 1.03, color="gray", alpha=0.08,
                   label=f"dependency > L = {L}")
    ax.set_ylim(-0.03, 1.08)
    ax.set_xticks(study["lengths"], [str(n) for n in study["lengths"]])
    ax.set_xlabel(f"instance length ({study['task']})")
    ax.set_ylabel("exact-match accuracy (greedy)")
    bars = "±1 std over seeds" if len(study["seeds"]) > 1 else "95% Wilson intervals"
    ax.set_title(f"{study['task']}: accuracy by length ({bars})", fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(fig, path)
