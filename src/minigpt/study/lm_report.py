"""Language modelling's report parts: the length and generation tables and the two plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .figures import color, legend_outside, mark_L, plt, save
from .objective import Table
from .summary import fmt_stat, mult


def _ppl_at(agg: dict[str, Any], length: int) -> float | None:
    return next((row["ppl"]["mean"] for row in agg["length_ppl"] if row["length"] == length),
                None)


def _length_table(results: dict[str, Any]) -> Table:
    study, aggs = results["study"], results["aggregates"]
    L = study["block_size"]
    head = ["encoding"] + [f"{mult(n, L)} ({n})" for n in study["lengths"]]
    rows = []
    for a in aggs:
        row = [a["pos"]]
        for c in a["length_ppl"]:
            flag = " (untrained parameters)" if c.get("untrained") and c["reason"] is None else ""
            row.append(fmt_stat(c["ppl"], 2) + flag if c["ppl"]["mean"] is not None
                       else (c["reason"] or "n/a"))
        rows.append(row)
    at_L = [(a["pos"], _ppl_at(a, L)) for a in aggs if _ppl_at(a, L) is not None]
    if at_L:
        bp, bv = min(at_L, key=lambda x: x[1])
        rows.append([f"best window of L ({bp}: its last L tokens only)"]
                    + [f"{bv:.2f}" if n >= L else "" for n in study["lengths"]])
    if study.get("unigram_ppl"):
        rows.append(["unigram baseline (no context)"]
                    + [f"{study['unigram_ppl']:.2f}"] * len(study["lengths"]))
    return head, rows


def _generation_table(results: dict[str, Any]) -> Table:
    head = ["encoding", "temperature", "held-out ppl at L", "distinct-1", "distinct-2",
            "repeated 4-grams", "known words"]
    L = results["study"]["block_size"]
    rows = []
    for a in results["aggregates"]:
        ppl = next((c["ppl"] for c in a["length_ppl"] if c["length"] == L), None)
        for g in a["generation"]:
            rows.append([a["pos"], f"{g['temperature']:g}", fmt_stat(ppl, 2) if ppl else "n/a",
                         *(fmt_stat(g[k], 3) for k in ("distinct_1", "distinct_2",
                                                       "repeated_4gram_share",
                                                       "known_word_share"))])
    return head, rows


def plot_length_ppl(results: dict[str, Any], path: Path) -> Path:
    study = results["study"]
    L = study["block_size"]
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    best = None
    for a in results["aggregates"]:
        pts = [(c["length"], c["ppl"]["mean"], c["ppl"]["std"] or 0.0) for c in a["length_ppl"]
               if c["ppl"]["mean"] is not None]
        if not pts:
            continue
        x, y, e = zip(*pts)
        label = a["pos"] if a["extrapolates"] else f"{a['pos']} (n/a past L)"
        ax.errorbar(x, y, yerr=e if a["seeds"] > 1 else None, fmt="o-", color=color(a["pos"]),
                    capsize=3, label=label)
        v = _ppl_at(a, L)
        if v is not None and (best is None or v < best[1]):
            best = (a["pos"], v)
    if best:
        ax.plot([L, max(study["lengths"])], [best[1]] * 2, color="black", ls="--", lw=1,
                label=f"best window of L ({best[0]})")
    if study.get("unigram_ppl"):
        ax.axhline(study["unigram_ppl"], color="black", ls=":", lw=1,
                   label="unigram baseline (no context)")
    mark_L(ax, L, "trained L")
    ax.set_xscale("log", base=2)
    ax.set_xticks(study["lengths"], [str(n) for n in study["lengths"]])
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 4:  # a log axis only when the range is wide
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("evaluation window length (tokens)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"The same {study['eval_span_tokens']} tokens at every length", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return save(fig, path)


def plot_position_loss(results: dict[str, Any], path: Path) -> Path:
    study = results["study"]
    L, longest = study["block_size"], max(study["lengths"])
    width = max(1, longest // 32)  # bin positions so the curve is readable
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for a in results["aggregates"]:
        pl = a["position_loss"]
        m = np.array(pl["mean"], dtype=float)
        if not len(m):
            continue
        s = np.array(pl["std"], dtype=float)
        nb = -(-len(m) // width)
        xs = np.clip(np.array([min(len(m), (b + 1) * width) - 1 for b in range(nb)])
                     - (width - 1) / 2, 0, None)
        ym = np.array([m[b * width:(b + 1) * width].mean() for b in range(nb)])
        ys = np.array([s[b * width:(b + 1) * width].mean() for b in range(nb)])
        c = color(a["pos"])
        ax.plot(xs, ym, color=c, label=a["pos"] + ("" if a["extrapolates"] else " (stops at L)"))
        if a["seeds"] > 1:
            ax.fill_between(xs, ym - ys, ym + ys, color=c, alpha=0.2)
    mark_L(ax, L, "trained L")
    ax.set_xlabel(f"position inside a window of {longest} tokens"
                  + (f" (bins of {width})" if width > 1 else ""))
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss by position at the longest length", fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(fig, path)
