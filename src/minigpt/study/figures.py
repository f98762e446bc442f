"""The plots every study draws (loss curves, cost) and the helpers objectives share. Legends
sit outside the axes, so they can never cover a result (tests/test_study.py checks that no
plotted point lies under any legend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..plots import save  # noqa: E402


def color(pos: str) -> Any:
    from ..positional import REGISTRY

    names = list(REGISTRY)
    i = names.index(pos) if pos in names else len(names)
    return plt.get_cmap("tab10")(i % 10)


def legend_outside(ax: Any) -> Any:
    """plots.legend_outside for an axes that has labelled artists (none: no legend)."""
    from ..plots import legend_outside as outside

    return outside(ax, fontsize=8) if ax.get_legend_handles_labels()[0] else None


def mark_L(ax: Any, x: float, text: str) -> None:
    """A vertical line at x, named in the legend (a label on the plot would meet the title)."""
    ax.axvline(x, color="gray", ls="--", lw=1, label=f"{text} ({x:g})")


def mean_std_cols(columns: list[list[float]]) -> tuple[list[float], list[float]]:
    n = min(len(c) for c in columns)
    a = np.array([c[:n] for c in columns], dtype=float)
    std = a.std(axis=0, ddof=1) if len(columns) > 1 else np.zeros(n)
    return a.mean(axis=0).tolist(), std.tolist()


def plot_loss_curves(results: dict[str, Any], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13.5, 4.6))
    several = len(results["study"]["seeds"]) > 1
    for pos in results["study"]["encodings"]:
        runs = [r for r in results["runs"] if r["pos"] == pos]
        if not runs:
            continue
        c = color(pos)
        tr = [r["training"]["curves"]["train"] for r in runs]
        va = [r["training"]["curves"]["val"] for r in runs]
        if tr[0]["step"]:
            m, _ = mean_std_cols([t["loss"] for t in tr])
            ax1.plot(tr[0]["step"][: len(m)], m, color=c, alpha=0.35, lw=1)
        if va[0]["step"]:
            m, s = mean_std_cols([v["loss"] for v in va])
            x = va[0]["step"][: len(m)]
            ax1.plot(x, m, "o-", color=c, ms=3, label=f"{pos} (val)")
            if several:
                ax1.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                                 color=c, alpha=0.2)
        for k, (t, v) in enumerate(zip(tr, va)):
            ax2.plot(t["wall_s"], t["loss"], color=c, alpha=0.35, lw=1)
            ax2.plot(v["wall_s"], v["loss"], "o-", color=c, ms=3,
                     label=f"{pos} (val)" if k == 0 else None)
    for ax, xl in ((ax1, "step"), (ax2, "wall time (s)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
    band = "; band: ±1 std over seeds" if several else ""
    ax1.set_title(f"Loss against step (thin: train batches{band})", fontsize=10)
    ax2.set_title("Loss against wall time (one line per run)", fontsize=10)
    legend_outside(ax2)
    return save(fig, path)


def plot_cost(results: dict[str, Any], path: Path) -> Path:
    aggs = results["aggregates"]
    names = [a["pos"] for a in aggs]
    colors = [color(p) for p in names]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    panels = [("step_time_ms", "step time (ms, steady-state median)"),
              ("tokens_per_s", "tokens/s (median)"),
              ("params", "parameters (total)"), ("pos_params", "positional parameters")]
    for ax, (key, title) in zip(axes, panels):
        vals = [a[key]["mean"] or 0.0 for a in aggs]
        errs: Any = [a[key]["std"] or 0.0 for a in aggs]
        if key == "step_time_ms" and all(a["seeds"] == 1 for a in aggs):
            runs = {r["pos"]: r["training"]["step_time_ms"] for r in results["runs"]}
            errs = [[max(0.0, v - (runs[n]["q1"] or v)) for v, n in zip(vals, names)],
                    [max(0.0, (runs[n]["q3"] or v) - v) for v, n in zip(vals, names)]]
            title += ", IQR"
        ax.bar(names, vals, yerr=errs if np.any(errs) else None, color=colors, capsize=3)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


GENERIC_PLOTS = {
    "loss_curves.png": ("Training and validation loss against step and against wall time",
                        plot_loss_curves),
    "cost.png": ("Steady-state step time, throughput and parameter counts", plot_cost),
}
