"""results.json -> a summary paragraph, PNG plots, report.md and a self-contained report.html.

The summary is generated from the numbers (never written by hand): which encoding is best at
the trained length L, and for each encoding how its perplexity on the *same* validation
tokens changes when the context grows past L. Verdicts use the ratio
r = ppl(longest length) / ppl(L): r < 0.98 improves, r <= 1.10 stays flat, r <= 2 degrades,
r > 2 degrades steeply.

report.html embeds every plot as a base64 data URI and loads nothing else, so it opens from
disk with no server and no network.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .io import atomic_write_text
from .plots import save

FLAT, STEEP, IMPROVES = 1.10, 2.0, 0.98
NEAR_UNIGRAM = 0.9  # ppl at L at least this fraction of the unigram baseline: not learned
PLOTS = {
    "loss_curves.png": "Training and validation loss against step and against wall time",
    "length_ppl.png": "Validation perplexity against evaluation length (same tokens)",
    "position_loss.png": "Loss against position inside the window at the longest length",
    "cost.png": "Training time, throughput and parameter counts",
}


# --- the summary ----------------------------------------------------------------------------

def _ppl_at(agg: dict[str, Any], length: int) -> float | None:
    for row in agg["length_ppl"]:
        if row["length"] == length:
            return row["ppl"]["mean"]
    return None


def _std_at(agg: dict[str, Any], length: int) -> float:
    for row in agg["length_ppl"]:
        if row["length"] == length:
            return row["ppl"]["std"] or 0.0
    return 0.0


PLURAL = {"improves": "improve", "stays flat": "stay flat", "degrades": "degrade",
          "degrades steeply": "degrade steeply"}


def verdict(ratio: float) -> str:
    if ratio < IMPROVES:
        return "improves"
    if ratio <= FLAT:
        return "stays flat"
    if ratio <= STEEP:
        return "degrades"
    return "degrades steeply"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _mult(length: int, L: int) -> str:
    m = length / L
    if m == 1:
        return "L"
    return f"{m:g}L" if abs(m - round(m)) < 1e-9 or m < 1 else f"{length} tokens"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """One paragraph of findings computed from the aggregates, and the findings as data."""
    study, aggs = results["study"], results["aggregates"]
    L = study["block_size"]
    longest = max(study["lengths"])
    nseeds = len(study["seeds"])
    over = f" (mean over {nseeds} seeds)" if nseeds > 1 else ""
    findings: dict[str, Any] = {"block_size": L, "longest_length": longest}
    parts: list[str] = []

    at_L = sorted(((a["pos"], _ppl_at(a, L)) for a in aggs if _ppl_at(a, L) is not None),
                  key=lambda x: x[1])
    findings["ranking_at_L"] = [[p, v] for p, v in at_L]
    if at_L:
        best, bv = at_L[0]
        findings["best_at_L"] = best
        value = f"the lowest validation perplexity{over} ({bv:.2f})" if len(at_L) > 1 \
            else f"a validation perplexity{over} of {bv:.2f}"
        s = f"At the trained length L = {L}, {best} reaches {value}"
        if len(at_L) > 1:
            rest = [f"{p} ({v:.2f})" for p, v in at_L[1:]]
            s += f", ahead of {_join(rest)}"
            if nseeds > 1:
                by = {a["pos"]: a for a in aggs}
                spread = max(_std_at(by[best], L), _std_at(by[at_L[1][0]], L))
                if at_L[1][1] - bv <= spread:
                    s += f"; the gap to {at_L[1][0]} is within the seed-to-seed spread"
        parts.append(s + ".")

    unigram = study.get("unigram_ppl")
    weak = [(p, v) for p, v in at_L if unigram and v >= NEAR_UNIGRAM * unigram]
    findings["near_unigram"] = [p for p, _ in weak]
    if weak:
        names = _join([f"{p} ({v:.2f})" for p, v in weak])
        verb = "stays" if len(weak) == 1 else "stay"
        parts.append(
            f"At L, {names} {verb} near the context-free unigram baseline "
            f"(ppl {unigram:.2f}, a model that ignores context), so "
            f"{'it has' if len(weak) == 1 else 'they have'} not learned to use context within "
            "this training budget and the curve past L says nothing about extrapolation.")

    past = {}
    if longest > L:
        for a in aggs:
            base, far = _ppl_at(a, L), _ppl_at(a, longest)
            if base is None or far is None or a["pos"] in findings["near_unigram"]:
                continue
            r = far / base
            past[a["pos"]] = {"ratio": r, "verdict": verdict(r), "ppl": far}
        findings["past_L"] = past
        groups: dict[str, list[str]] = {}
        for pos, v in sorted(past.items(), key=lambda kv: kv[1]["ratio"]):
            groups.setdefault(v["verdict"], []).append(f"{pos} (x{v['ratio']:.2f})")
        phrases = [f"{_join(names)} {v if len(names) == 1 else PLURAL[v]}"
                   for v, names in groups.items()]
        s = ""
        if phrases:
            s = (f"Scoring the same {study['eval_span_tokens']} validation tokens with windows "
                 f"of up to {_mult(longest, L)} = {longest} tokens (in brackets: perplexity at "
                 f"{_mult(longest, L)} divided by perplexity at L), {_join(phrases)}")
        stuck = [a["pos"] for a in aggs if not a["extrapolates"]]
        findings["cannot_extrapolate"] = stuck
        if stuck:
            whose = "their" if len(stuck) > 1 else "its"
            tail = f"{_join(stuck)} cannot be evaluated past L ({whose} positions stop at L)"
            s = f"{s}, while {tail}" if s else tail[0].upper() + tail[1:]
        if s:
            parts.append(s + ".")
        far = sorted(((p, v["ppl"]) for p, v in past.items()), key=lambda x: x[1])
        if far:
            findings["best_at_longest"] = far[0][0]
            parts.append(f"At {_mult(longest, L)} the best is {far[0][0]} ({far[0][1]:.2f}).")
    else:
        parts.append("No length past L was evaluated.")

    times = sorted((a["train_time_s"]["mean"], a["pos"]) for a in aggs
                   if a["train_time_s"]["mean"] is not None)
    counts = {a["pos"]: a["pos_params"]["mean"] for a in aggs}
    if times:
        findings["fastest"], findings["slowest"] = times[0][1], times[-1][1]
        d = 0 if times[0][0] >= 10 else 1
        if len(times) == 1:
            per = " per run" if nseeds > 1 else ""
            s = f"Training {times[0][1]} took {times[0][0]:.{d}f} s{per}"
        else:
            s = (f"Training took {times[0][0]:.{d}f}-{times[-1][0]:.{d}f} s per run "
                 f"(fastest {times[0][1]}, slowest {times[-1][1]})")
        lo, hi = min(counts.values()), max(counts.values())
        if hi > lo:
            s += (f"; the encodings add from {lo:,.0f} "
                  f"({_join([p for p, v in counts.items() if v == lo])}) to {hi:,.0f} "
                  f"({_join([p for p, v in counts.items() if v == hi])}) positional parameters")
        parts.append(s + ".")
    if nseeds == 1:
        parts.append("With one seed these are single measurements; use --seeds 3 for error bars.")
    return {"text": " ".join(parts), "findings": findings}


# --- formatting -----------------------------------------------------------------------------

def fmt_stat(s: dict[str, Any], digits: int = 3, *, integer: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    if integer:
        text = f"{s['mean']:,.0f}"
        return text + (f" ± {s['std']:,.0f}" if s["n"] > 1 and s["std"] else "")
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")


def tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as (header, rows) of strings, shared by md and html."""
    study, aggs = results["study"], results["aggregates"]
    L = study["block_size"]
    out: dict[str, tuple[list[str], list[list[str]]]] = {}

    head = ["encoding"] + [f"{_mult(n, L)} ({n})" for n in study["lengths"]]
    rows = []
    for a in aggs:
        row = [a["pos"]]
        for c in a["length_ppl"]:
            row.append(fmt_stat(c["ppl"], 2) if c["ppl"]["mean"] is not None
                       else (c["reason"] or "n/a"))
        rows.append(row)
    if study.get("unigram_ppl"):
        rows.append(["unigram baseline (no context)"]
                    + [f"{study['unigram_ppl']:.2f}"] * len(study["lengths"]))
    out["length"] = (head, rows)

    head = ["encoding", "seeds", "final val loss", "val ppl", "train time (s)", "tokens/s",
            "params", "positional params", "peak memory (MB)"]
    rows = []
    for a in aggs:
        rows.append([a["pos"], str(a["seeds"]), fmt_stat(a["final_val_loss"]),
                     fmt_stat(a["final_val_ppl"], 2), fmt_stat(a["train_time_s"], 1),
                     fmt_stat(a["tokens_per_s"], integer=True), fmt_stat(a["params"], integer=True),
                     fmt_stat(a["pos_params"], integer=True), fmt_stat(a["peak_mem_mb"], 0)])
    out["training"] = (head, rows)

    head = ["encoding", "temperature", "held-out ppl at L", "distinct-1", "distinct-2",
            "repeated 4-grams", "known words"]
    rows = []
    for a in aggs:
        ppl = next((c["ppl"] for c in a["length_ppl"] if c["length"] == L), None)
        for g in a["generation"]:
            rows.append([a["pos"], f"{g['temperature']:g}", fmt_stat(ppl, 2) if ppl else "n/a",
                         fmt_stat(g["distinct_1"]), fmt_stat(g["distinct_2"]),
                         fmt_stat(g["repeated_4gram_share"]), fmt_stat(g["known_word_share"])])
    out["generation"] = (head, rows)

    env = results["environment"]
    t = study["base_config"]["train"]
    m = study["base_config"]["model"]
    rows = [["preset", study["preset"]], ["encodings", ", ".join(study["encodings"])],
            ["seeds", ", ".join(map(str, study["seeds"]))],
            ["model", (f"{m['n_layer']} layers, {m['n_head']} heads, d_model {m['d_model']}, "
                      f"L = {m['block_size']}, vocabulary {m['vocab_size']}")],
            ["training", (f"{t['max_steps']} steps of {t['batch_size']}x{t['grad_accum']} "
                         f"windows, lr {t['lr']:g}, data {t['data']} ({t['tokenizer']})")],
            ["evaluation", (f"lengths {', '.join(map(str, study['lengths']))}; span of "
                           f"{study['eval_span_tokens']} tokens")],
            ["environment", (f"python {env['python']}, torch {env['torch']}, minigpt "
                            f"{env['minigpt']}, {env['device']} ({env['device_name']}), "
                            f"{env['torch_threads']} threads, {env['cpu_count']} CPUs, training in "
                             f"{env.get('train_precision', 'float32')}")],
            ["created", results["created"]], ["fingerprint", study["fingerprint"]]]
    out["settings"] = (["setting", "value"], rows)
    return out


# --- plots ----------------------------------------------------------------------------------

def _color(pos: str) -> str:
    from .positional import REGISTRY

    names = list(REGISTRY)
    i = names.index(pos) if pos in names else len(names)
    return plt.get_cmap("tab10")(i % 10)


def _mean_std(columns: list[list[float]]) -> tuple[list[float], list[float]]:
    import numpy as np

    n = min(len(c) for c in columns)
    a = np.array([c[:n] for c in columns], dtype=float)
    std = a.std(axis=0, ddof=1) if len(columns) > 1 else np.zeros(n)
    return a.mean(axis=0).tolist(), std.tolist()


def plot_loss_curves(results: dict[str, Any], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for pos in results["study"]["encodings"]:
        runs = [r for r in results["runs"] if r["pos"] == pos]
        if not runs:
            continue
        c = _color(pos)
        tr = [r["training"]["curves"]["train"] for r in runs]
        va = [r["training"]["curves"]["val"] for r in runs]
        if tr[0]["step"]:
            m, _ = _mean_std([t["loss"] for t in tr])
            ax1.plot(tr[0]["step"][: len(m)], m, color=c, alpha=0.35, lw=1)
        if va[0]["step"]:
            m, s = _mean_std([v["loss"] for v in va])
            x = va[0]["step"][: len(m)]
            ax1.plot(x, m, "o-", color=c, ms=3, label=f"{pos} (val)")
            if len(runs) > 1:
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
    ax1.set_title("Loss against step (thin: train batches; band: ±1 std over seeds)")
    ax2.set_title("Loss against wall time (one line per run)")
    ax1.legend(fontsize=8)
    return save(fig, path)


def plot_length_ppl(results: dict[str, Any], path: Path) -> Path:
    study = results["study"]
    L = study["block_size"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for a in results["aggregates"]:
        pts = [(c["length"], c["ppl"]["mean"], c["ppl"]["std"] or 0.0) for c in a["length_ppl"]
               if c["ppl"]["mean"] is not None]
        if not pts:
            continue
        x, y, e = zip(*pts)
        label = a["pos"] if a["extrapolates"] else f"{a['pos']} (n/a past L)"
        ax.errorbar(x, y, yerr=e if a["seeds"] > 1 else None, fmt="o-", color=_color(a["pos"]),
                    capsize=3, label=label)
    if study.get("unigram_ppl"):
        ax.axhline(study["unigram_ppl"], color="black", ls=":", lw=1,
                   label="unigram baseline (no context)")
    ax.axvline(L, color="gray", ls="--", lw=1)
    ax.text(L, ax.get_ylim()[1], " trained L", va="top", color="gray", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(study["lengths"], [str(n) for n in study["lengths"]])
    lo, hi = ax.get_ylim()
    log_y = lo > 0 and hi / lo > 4  # a log axis only when the range is wide
    if log_y:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("evaluation window length (tokens)")
    ax.set_ylabel("validation perplexity" + (" (log scale)" if log_y else ""))
    ax.set_title(f"Length generalization: the same {study['eval_span_tokens']} tokens at every "
                 "length")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_position_loss(results: dict[str, Any], path: Path) -> Path:
    import numpy as np

    study = results["study"]
    L, longest = study["block_size"], max(study["lengths"])
    width = max(1, longest // 32)  # bin positions so the curve is readable
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for a in results["aggregates"]:
        pl = a["position_loss"]
        m = np.array(pl["mean"], dtype=float)
        if not len(m):
            continue
        s = np.array(pl["std"], dtype=float)
        nb = -(-len(m) // width)
        xs = np.array([min(len(m), (b + 1) * width) - 1 for b in range(nb)]) - (width - 1) / 2
        xs = np.clip(xs, 0, None)
        ym = np.array([m[b * width:(b + 1) * width].mean() for b in range(nb)])
        ys = np.array([s[b * width:(b + 1) * width].mean() for b in range(nb)])
        c = _color(a["pos"])
        label = a["pos"] + ("" if a["extrapolates"] else " (stops at L)")
        ax.plot(xs, ym, color=c, label=label)
        if a["seeds"] > 1:
            ax.fill_between(xs, ym - ys, ym + ys, color=c, alpha=0.2)
    ax.axvline(L, color="gray", ls="--", lw=1)
    ax.text(L, ax.get_ylim()[1], " trained L", va="top", color="gray", fontsize=8)
    ax.set_xlabel(f"position inside a window of {longest} tokens"
                  + (f" (bins of {width})" if width > 1 else ""))
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss by position at the longest length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_cost(results: dict[str, Any], path: Path) -> Path:
    aggs = results["aggregates"]
    names = [a["pos"] for a in aggs]
    colors = [_color(p) for p in names]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    panels = [("train_time_s", "training time (s)"), ("tokens_per_s", "tokens/s (median)"),
              ("params", "parameters (total)"), ("pos_params", "positional parameters")]
    for ax, (key, title) in zip(axes, panels):
        vals = [a[key]["mean"] or 0.0 for a in aggs]
        errs = [a[key]["std"] or 0.0 for a in aggs]
        ax.bar(names, vals, yerr=errs if any(errs) else None, color=colors, capsize=3)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    return [plot_loss_curves(results, out / "loss_curves.png"),
            plot_length_ppl(results, out / "length_ppl.png"),
            plot_position_loss(results, out / "position_loss.png"),
            plot_cost(results, out / "cost.png")]


# --- markdown and html ----------------------------------------------------------------------

def md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


DEFINITIONS = [
    ("Perplexity = exp(mean cross-entropy in nats per token). Length generalization scores one "
    "fixed validation span cut into non-overlapping windows of each length, so every token is "
    "scored once at every length and only the context before it changes. Evaluation and "
    "sampling run in float32, whatever precision training used."),
    (f"Past-L verdicts compare perplexity at the longest length with perplexity at L: ratio "
    f"< {IMPROVES} improves, <= {FLAT} stays flat, <= {STEEP} degrades, above that degrades "
    f"steeply. An encoding whose perplexity at L is at least {NEAR_UNIGRAM:g} x the unigram "
    "baseline (training-token frequencies, no context) has not learned to use context and gets "
    "no verdict."),
    ("Generation metrics are over the generated words only (prompt excluded): distinct-n = "
    "unique n-grams / all n-grams; repeated 4-grams = share of 4-gram occurrences that repeat "
    "an earlier one in the same sample; known words = share of generated words that occur in "
    "the training text. Held-out ppl is the perplexity at L on the evaluation span."),
    ("Peak memory on a CPU is the process's peak resident set size during the run (it includes "
    "the Python interpreter, PyTorch and the data); on CUDA it is the peak allocated memory."),
]


def _fence(text: str) -> str:
    fence = "~~~~" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"


def _samples(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(encoding, temperature, text) of the first seed of each encoding."""
    out = []
    for pos in results["study"]["encodings"]:
        run = next((r for r in results["runs"] if r["pos"] == pos), None)
        for g in (run or {}).get("generation", []):
            out.append((pos, g["temperature"], g["text"]))
    return out


def render_markdown(results: dict[str, Any]) -> str:
    study = results["study"]
    t = tables(results)
    seeds = len(study["seeds"])
    lines = [
        "# Positional encodings compared",
        "",
        (f"minigpt compare, preset `{study['preset']}`: {len(study['encodings'])} encodings x "
        f"{seeds} seed{'s' if seeds > 1 else ''}, trained at L = {study['block_size']} "
        f"tokens. Tables show mean ± sample std over seeds where there are several."),
        "",
        "## Summary",
        "",
        results["summary"]["text"],
        "",
        "## Length generalization (validation perplexity at each evaluation length)",
        "",
        md_table(*t["length"]),
        "",
        "![perplexity against length](length_ppl.png)",
        "",
        "![loss against position](position_loss.png)",
        "",
        "## Training",
        "",
        md_table(*t["training"]),
        "",
        "![loss curves](loss_curves.png)",
        "",
        "![training cost](cost.png)",
        "",
        "## Generation quality",
        "",
        md_table(*t["generation"]),
        "",
        f"Samples (first seed) from the prompt {study['prompt']!r}:",
        "",
    ]
    for pos, temp, text in _samples(results):
        lines += [f"**{pos}**, temperature {temp:g}:", "", _fence(study["prompt"] + text), ""]
    lines += ["## What was held equal", ""]
    lines += [f"- {s}" for s in study["held_equal"]]
    lines += ["", "## Definitions", ""] + [f"- {s}" for s in DEFINITIONS]
    lines += ["", "## Settings and environment", "", md_table(*t["settings"]), "",
              ("Every run's checkpoint is in `runs/<encoding>-s<seed>/` (sample it with "
              "`minigpt sample --ckpt ...`); all numbers are in `results.json`."), ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;
background:#fafafa}main{max-width:1100px;margin:0 auto;padding:24px 32px 64px}
h1{margin-bottom:4px}.meta{color:#666;margin-top:0}
#summary{font-size:1.08em;line-height:1.55;background:#eef4ff;border-left:4px solid #3b6fd8;
padding:12px 16px;border-radius:4px}
table{border-collapse:collapse;margin:12px 0 20px;font-size:.92em;background:#fff}
th,td{border:1px solid #ddd;padding:5px 9px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f0f0f0}
img{max-width:100%;display:block;margin:10px 0 20px;border:1px solid #eee;background:#fff}
pre{background:#fff;border:1px solid #e3e3e3;padding:10px;white-space:pre-wrap;
font-size:.88em}details{margin:6px 0}li{margin:4px 0}
"""


def render_html(results: dict[str, Any], images: dict[str, bytes]) -> str:
    """The whole report as one HTML page; `images` maps PNG file names to their bytes."""
    e = html.escape
    study = results["study"]
    t = tables(results)

    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{e(PLOTS[name])}">'

    seeds = len(study["seeds"])
    samples = []
    for pos, temp, text in _samples(results):
        samples.append(f"<details{' open' if temp == study['temperatures'][0] else ''}>"
                       f"<summary><b>{e(pos)}</b>, temperature {temp:g}</summary>"
                       f"<pre>{e(study['prompt'] + text)}</pre></details>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>minigpt: positional encodings compared</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>Positional encodings compared</h1>",
        (f'<p class="meta">minigpt compare, preset <code>{e(study["preset"])}</code>: '
        f"{len(study['encodings'])} encodings &times; {seeds} seed{'s' if seeds > 1 else ''}, "
        f"trained at L = {study['block_size']} tokens; created {e(results['created'])}. "
        "Tables show mean &plusmn; sample std over seeds where there are several.</p>"),
        "<h2>Summary</h2>",
        f'<p id="summary">{e(results["summary"]["text"])}</p>',
        "<h2>Length generalization</h2>",
        "<p>Validation perplexity at each evaluation length (tokens in brackets).</p>",
        html_table(*t["length"]), img("length_ppl.png"), img("position_loss.png"),
        "<h2>Training</h2>", html_table(*t["training"]), img("loss_curves.png"),
        img("cost.png"),
        "<h2>Generation quality</h2>", html_table(*t["generation"]),
        f"<p>Samples (first seed) from the prompt <code>{e(repr(study['prompt']))}</code>:</p>",
        *samples,
        "<h2>What was held equal</h2>",
        "<ul>" + "".join(f"<li>{e(s)}</li>" for s in study["held_equal"]) + "</ul>",
        "<h2>Definitions</h2>",
        "<ul>" + "".join(f"<li>{e(s)}</li>" for s in DEFINITIONS) + "</ul>",
        "<h2>Settings and environment</h2>", html_table(*t["settings"]),
        ("<p>Every run's checkpoint is in <code>runs/&lt;encoding&gt;-s&lt;seed&gt;/</code>; all "
        "numbers are in <code>results.json</code>.</p>"),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(results: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the PNGs, report.md and report.html into `out`; return their paths."""
    out = Path(out)
    pngs = write_plots(results, out)
    md = out / "report.md"
    atomic_write_text(md, render_markdown(results))
    page = out / "report.html"
    atomic_write_text(page, render_html(results, {p.name: p.read_bytes() for p in pngs}))
    return [*pngs, md, page]



# --- the results.json schema as a documentation page --------------------------------------------

def _type_text(s: dict[str, Any]) -> str:
    if "const" in s:
        return f"`{json.dumps(s['const'])}`"
    if "enum" in s:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in s["enum"])
    t = s.get("type", "any")
    if t == "array":
        items = s.get("items", {})
        inner = "objects" if items.get("type") == "object" else _type_text(items)
        return f"array of {inner}"
    return " or ".join(t) if isinstance(t, list) else t


def schema_markdown(schema: dict[str, Any]) -> str:
    """A Markdown page describing a JSON Schema: one table row per field (docs/ keeps the
    page for RESULTS_SCHEMA, and a test checks it matches, so it cannot drift)."""
    rows: list[str] = []

    def walk(s: dict[str, Any], path: str, required: bool) -> None:
        desc = s.get("description", "").replace("|", "\\|")
        rows.append(f"| `{path}` | {_type_text(s)} | {'yes' if required else 'no'} | {desc} |")
        need = set(s.get("required", []))
        for k, sub in s.get("properties", {}).items():
            walk(sub, f"{path}.{k}" if path else k, k in need)
        items = s.get("items")
        if isinstance(items, dict) and items.get("type") == "object":
            for k, sub in items.get("properties", {}).items():
                walk(sub, f"{path}[].{k}", k in set(items.get("required", [])))

    need = set(schema.get("required", []))
    for k, sub in schema.get("properties", {}).items():
        walk(sub, k, k in need)
    return "\n".join([
        f"# {schema.get('title', 'schema')}: the fields of `results.json`",
        "",
        "<!-- generated from minigpt.compare.RESULTS_SCHEMA by `python -m minigpt.report "
        "> docs/results-schema.md`; tests/test_docs.py checks it is current -->",
        "",
        schema.get("description", ""),
        "",
        f"JSON Schema id: `{schema.get('$id', '')}` (the full schema is "
        "`minigpt.compare.RESULTS_SCHEMA`; the tests validate every study's `results.json` "
        "against it).",
        "",
        "| field | type | required | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":  # python -m minigpt.report > docs/results-schema.md
    from .compare import RESULTS_SCHEMA

    print(schema_markdown(RESULTS_SCHEMA), end="")
