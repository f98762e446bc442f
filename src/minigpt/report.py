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
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .files import atomic_write_text
from .plots import save
from .text import plural

FLAT, STEEP, IMPROVES = 1.10, 2.0, 0.98
NEAR_UNIGRAM = 0.9  # ppl at L at least this fraction of the unigram baseline: not learned
LM_PLOTS = {
    "loss_curves.png": "Training and validation loss against step and against wall time",
    "length_ppl.png": "Validation perplexity against evaluation length (same tokens)",
    "position_loss.png": "Loss against position inside the window at the longest length",
    "cost.png": "Steady-state step time, throughput and parameter counts",
}
TASK_PLOTS = {
    "accuracy.png": "Exact-match accuracy against instance length",
    "loss_curves.png": LM_PLOTS["loss_curves.png"],
    "cost.png": LM_PLOTS["cost.png"],
}
PLOTS = {**LM_PLOTS, **TASK_PLOTS}


def plots_for(results: dict[str, Any]) -> dict[str, str]:
    return TASK_PLOTS if _is_task(results) else LM_PLOTS


def _is_task(results: dict[str, Any]) -> bool:
    return results["study"].get("task", "lm") != "lm"


# --- noise ----------------------------------------------------------------------------------

def _items(results: dict[str, Any], pos: str, metric: str, length: int | None) -> list[Any]:
    """Per seed: the per-item values behind one number of one encoding (window losses,
    per-instance hits or step-time samples), and the number itself."""
    out = []
    for r in results["runs"]:
        if r["pos"] != pos:
            continue
        if metric == "step":
            st = r["training"]["step_time_ms"]
            out.append((st["samples"], st["median"]))
            continue
        key, value = (("length_generalization", "loss") if metric == "loss"
                      else ("task_accuracy", "accuracy"))
        row = next((x for x in r[key]["results"] if x["length"] == length), None)
        if row is None or row[value] is None:
            return []
        out.append((row["window_loss" if metric == "loss" else "per_instance"], row[value]))
    return out


def differs(results: dict[str, Any], a: str, b: str, metric: str,
            length: int | None = None) -> bool:
    """Whether encodings a and b differ in `metric` beyond the measured noise: with two or
    more seeds, by more than twice the standard error of the difference of seed means; with
    one seed, when the 95% bootstrap interval of the difference excludes 0 (paired over the
    same evaluation windows or instances). Step times of one seed come from runs made one
    after another, so the difference of their medians must also exceed the larger
    interquartile range of the two: within-run intervals do not see drift between runs."""
    from .evaluation import paired_bootstrap, unpaired_bootstrap_median

    ia, ib = _items(results, a, metric, length), _items(results, b, metric, length)
    if not ia or not ib:
        return False
    if len(ia) > 1 and len(ib) > 1:
        va = np.array([v for _, v in ia], dtype=float)
        vb = np.array([v for _, v in ib], dtype=float)
        se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
        return abs(va.mean() - vb.mean()) > 2 * se and va.mean() != vb.mean()
    xa, xb = ia[0][0], ib[0][0]
    if not xa or not xb:
        return False
    if metric == "step":  # runs at different times: the spread must be exceeded, too
        qa, qb = np.percentile(xa, [25, 75]), np.percentile(xb, [25, 75])
        ci = unpaired_bootstrap_median(xa, xb)
        spread = max(qa[1] - qa[0], qb[1] - qb[0])
        return (ci["lo"] > 0 or ci["hi"] < 0) and abs(ci["diff"]) > spread
    ci = paired_bootstrap(xa, xb)
    return ci["lo"] > 0 or ci["hi"] < 0


def _noise_words(results: dict[str, Any]) -> str:
    n = len(results["study"]["seeds"])
    if n > 1:
        return f"beyond twice the standard error over {n} seeds"
    return "beyond a 95% paired bootstrap interval"


# --- the summary ----------------------------------------------------------------------------

def _ppl_at(agg: dict[str, Any], length: int) -> float | None:
    for row in agg["length_ppl"]:
        if row["length"] == length:
            return row["ppl"]["mean"]
    return None


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


def _ranking(results: dict[str, Any], scores: list[tuple[str, float]], metric: str,
             length: int | None, fmt: str) -> tuple[str, dict[str, Any]]:
    """'X (v) is best; ahead of A (v) and B (v) beyond the noise; C (v) within noise' for
    scores sorted best first."""
    best, bv = scores[0]
    ahead = [p for p, _ in scores[1:] if differs(results, best, p, metric, length)]
    tied = [p for p, _ in scores[1:] if p not in ahead]
    val = dict(scores)
    s = f"{best} ({bv:{fmt}})"
    if ahead:
        s += f", ahead of {_join([f'{p} ({val[p]:{fmt}})' for p in ahead])} {_noise_words(results)}"
    if tied:
        s += (f"{';' if ahead else ','} {_join([f'{p} ({val[p]:{fmt}})' for p in tied])} "
              f"{'is' if len(tied) == 1 else 'are'} within noise of it")
    return s, {"best": best, "ahead_of": ahead, "within_noise": tied}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """One paragraph of findings computed from the numbers, and the findings as data."""
    parts, findings = (_summarize_task if _is_task(results) else _summarize_lm)(results)
    parts += _summarize_cost(results, findings)
    untrained = sorted({row["untrained"] for a in results["aggregates"]
                        for row in a.get("length_ppl", []) + a.get("accuracy", [])
                        if row.get("untrained") and row.get("reason") is None})
    findings["untrained"] = untrained
    if untrained:
        parts.append("Warning: some numbers use parameters that never received a gradient ("
                     + "; ".join(untrained) + "), so they measure initial values.")
    if len(results["study"]["seeds"]) == 1:
        parts.append("With one seed, noise is judged within that seed (bootstrap over "
                     "evaluation items); use --seeds 3 for seed-to-seed error bars.")
    return {"text": " ".join(parts), "findings": findings}


def _summarize_lm(results: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    study = results["study"]
    L, longest = study["block_size"], max(study["lengths"])
    findings: dict[str, Any] = {"block_size": L, "longest_length": longest}
    parts = _summarize_at_L(results, findings)
    if longest <= L:
        parts.append("No length past L was evaluated.")
        return parts, findings
    return parts + _summarize_past_L(results, findings), findings


def _summarize_at_L(results: dict[str, Any], findings: dict[str, Any]) -> list[str]:
    """The ranking at the trained length, and the encodings that stay near the unigram
    baseline there (they learned too little for their curve past L to mean anything)."""
    study, aggs = results["study"], results["aggregates"]
    L = study["block_size"]
    over = f" (mean over {len(study['seeds'])} seeds)" if len(study["seeds"]) > 1 else ""
    parts: list[str] = []

    at_L = sorted(((a["pos"], _ppl_at(a, L)) for a in aggs if _ppl_at(a, L) is not None),
                  key=lambda x: x[1])
    findings["ranking_at_L"] = [[p, v] for p, v in at_L]
    if len(at_L) == 1:
        parts.append(f"At the trained length L = {L}, {at_L[0][0]} reaches a validation "
                     f"perplexity of {at_L[0][1]:.2f}{over}.")
        findings["best_at_L"] = at_L[0][0]
    elif at_L:
        s, f = _ranking(results, at_L, "loss", L, ".2f")
        findings["best_at_L"], findings["at_L"] = f["best"], f
        parts.append(f"At the trained length L = {L}, the lowest validation perplexity{over} is "
                     f"{s}.")

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
    return parts


def _summarize_past_L(results: dict[str, Any], findings: dict[str, Any]) -> list[str]:
    """How each encoding's perplexity changes from L to the longest length, and the ranking
    there."""
    study, aggs = results["study"], results["aggregates"]
    L, longest = study["block_size"], max(study["lengths"])
    parts: list[str] = []
    past = {}
    for a in aggs:
        base, far = _ppl_at(a, L), _ppl_at(a, longest)
        if base is None or far is None or a["pos"] in findings["near_unigram"]:
            continue
        r = far / base
        v = verdict(r)
        if v != "stays flat" and not _self_differs(results, a["pos"], L, longest):
            v = "stays flat"  # the change is within the noise of the measurement
        past[a["pos"]] = {"ratio": r, "verdict": v, "ppl": far}
    findings["past_L"] = past
    groups: dict[str, list[str]] = {}
    for pos, v in sorted(past.items(), key=lambda kv: kv[1]["ratio"]):
        groups.setdefault(v["verdict"], []).append(f"{pos} (x{v['ratio']:.2f})")
    phrases = [f"{_join(names)} {v if len(names) == 1 else PLURAL[v]}"
               for v, names in groups.items()]
    s = ""
    if phrases:
        s = (f"Scoring the same {study['eval_span_tokens']} validation tokens with a context "
             f"budget of up to {_mult(longest, L)} = {longest} tokens (in brackets: perplexity "
             f"at {_mult(longest, L)} divided by perplexity at L), {_join(phrases)}")
    stuck = [a["pos"] for a in aggs if not a["extrapolates"]]
    findings["cannot_extrapolate"] = stuck
    if stuck:
        whose = "their" if len(stuck) > 1 else "its"
        tail = f"{_join(stuck)} cannot be evaluated past L ({whose} positions stop at L)"
        s = f"{s}, while {tail}" if s else tail[0].upper() + tail[1:]
    if s:
        parts.append(s + ".")
    far = sorted(((p, v["ppl"]) for p, v in past.items()), key=lambda x: x[1])
    if len(far) > 1:
        s, f = _ranking(results, far, "loss", longest, ".2f")
        findings["best_at_longest"], findings["at_longest"] = f["best"], f
        parts.append(f"At {_mult(longest, L)} the lowest perplexity is {s}.")
    elif far:
        findings["best_at_longest"] = far[0][0]
    return parts


def _self_differs(results: dict[str, Any], pos: str, L: int, longest: int) -> bool:
    """Whether one encoding's loss at `longest` differs from its loss at L beyond noise
    (paired over the same windows; seed spread with several seeds)."""
    from .evaluation import paired_bootstrap

    a, b = _items(results, pos, "loss", longest), _items(results, pos, "loss", L)
    if not a or not b:
        return False
    if len(a) > 1:
        d = np.array([x for _, x in a]) - np.array([y for _, y in b])
        return abs(d.mean()) > 2 * d.std(ddof=1) / math.sqrt(len(d))
    ci = paired_bootstrap(a[0][0], b[0][0])
    return ci["lo"] > 0 or ci["hi"] < 0


def _acc_at(agg: dict[str, Any], n: int) -> float | None:
    return next((r["accuracy"]["mean"] for r in agg["accuracy"] if r["length"] == n), None)


def _guessing(task: str, instances: int) -> tuple[float, float]:
    """The task's chance accuracy, and the accuracy a guesser stays under: chance plus two
    binomial standard deviations over `instances` (0 for tasks nobody guesses)."""
    from .tasks import get_task

    p = get_task(task).chance
    return p, p + 2 * math.sqrt(p * (1 - p) / max(instances, 1))


def _summarize_task(results: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    study, aggs = results["study"], results["aggregates"]
    run0 = results["runs"][0]["task_accuracy"]
    nmax, task = run0["max_train_length"], study["task"]
    findings: dict[str, Any] = {"task": task, "max_train_length": nmax}
    parts = [f"Trained on {task} instances of length 1-{nmax} (L = {study['block_size']} "
             f"tokens), tested on {study['task_instances']} held-out instances per length."]
    inside = [n for n in study["lengths"] if n <= nmax]
    outside = [n for n in study["lengths"] if n > nmax]
    chance, bar = _guessing(task, study["task_instances"])
    unlearned = [a["pos"] for a in aggs
                 if inside and all((v := _acc_at(a, n)) is not None and v <= bar for n in inside)]
    findings["not_learned"] = unlearned
    if unlearned:
        who = ("No encoding learned" if len(unlearned) == len(aggs)
               else f"{_join(unlearned)} did not learn")
        how = ("0 at every tested length up to the longest trained" if chance == 0 else
               f"no better than guessing, {chance:g}, beyond two binomial standard deviations "
               "at any tested length up to the longest trained")
        low = "zeros" if chance == 0 else "scores"
        parts.append(f"{who} the task within this training budget ({how}), so "
                     f"{'their' if len(unlearned) > 1 else 'its'} {low} past it say nothing "
                     "about length generalization.")
    for n in ([max(inside)] if inside else []) + outside:
        scores = sorted(((a["pos"], _acc_at(a, n)) for a in aggs if _acc_at(a, n) is not None),
                        key=lambda x: -x[1])
        where = ("the longest trained length" if n <= nmax
                 else f"{n / nmax:.2g}x the longest trained length")
        if not scores:
            continue
        if all(v == 0 for _, v in scores):
            if "all_zero_from" in findings:
                continue
            rest_zero = all(_acc_at(a, m) in (0, None) for a in aggs
                            for m in study["lengths"] if m > n)
            if rest_zero:
                findings["all_zero_from"] = n
                parts.append(f"From length {n} ({where}) on, every encoding that can be "
                             "evaluated scores 0.")
            else:
                parts.append(f"At length {n} ({where}) every encoding scores 0.")
            continue
        if len(scores) == 1:
            parts.append(f"At length {n} ({where}) {scores[0][0]} scores {scores[0][1]:.2f}.")
            continue
        s, f = _ranking(results, scores, "acc", n, ".2f")
        findings.setdefault("at_length", {})[str(n)] = f
        parts.append(f"At length {n} ({where}) the highest exact-match accuracy is {s}.")
    stuck = [a["pos"] for a in aggs if not a["extrapolates"]]
    if stuck and outside:
        parts.append(f"{_join(stuck)} cannot be evaluated on examples longer than L.")
    return parts, findings


def _summarize_cost(results: dict[str, Any], findings: dict[str, Any]) -> list[str]:
    aggs = results["aggregates"]
    times = sorted((a["step_time_ms"]["mean"], a["pos"]) for a in aggs
                   if a["step_time_ms"]["mean"] is not None)
    counts = {a["pos"]: a["pos_params"]["mean"] for a in aggs}
    parts = []
    if len(times) == 1:
        parts.append(f"A steady-state training step took {times[0][0]:.1f} ms (median).")
    elif times:
        (t0, fast), (t1, slow) = times[0], times[-1]
        if differs(results, slow, fast, "step"):
            findings["fastest"], findings["slowest"] = fast, slow
            noise = (_noise_words(results) if len(results["study"]["seeds"]) > 1
                     else "beyond the spread of their step times")
            parts.append(f"A steady-state training step took {t0:.1f} ms ({fast}) to "
                         f"{t1:.1f} ms ({slow}); {fast} is faster than {slow} {noise}.")
        else:
            findings["fastest"] = findings["slowest"] = None
            parts.append(f"A steady-state training step took {t0:.1f}-{t1:.1f} ms (median) for "
                         "every encoding: within noise of each other.")
    lo, hi = min(counts.values()), max(counts.values())
    if hi > lo:
        parts.append(f"The encodings add from {lo:,.0f} "
                     f"({_join([p for p, v in counts.items() if v == lo])}) to {hi:,.0f} "
                     f"({_join([p for p, v in counts.items() if v == hi])}) positional "
                     "parameters.")
    return parts


# --- formatting -----------------------------------------------------------------------------

def fmt_stat(s: dict[str, Any], digits: int = 3, *, integer: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    if integer:
        text = f"{s['mean']:,.0f}"
        return text + (f" ± {s['std']:,.0f}" if s["n"] > 1 and s["std"] else "")
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")


def _flag(row: dict[str, Any]) -> str:
    return " (untrained parameters)" if row.get("untrained") and row.get("reason") is None else ""


def _acc_cell(results: dict[str, Any], pos: str, row: dict[str, Any]) -> str:
    if row["accuracy"]["mean"] is None:
        return row["reason"] or "n/a"
    if row["accuracy"]["n"] > 1:
        return fmt_stat(row["accuracy"], 2) + _flag(row)
    run = next(r for r in results["runs"] if r["pos"] == pos)
    one = next(x for x in run["task_accuracy"]["results"] if x["length"] == row["length"])
    return f"{one['accuracy']:.2f} [{one['ci_low']:.2f}, {one['ci_high']:.2f}]" + _flag(row)


Table = tuple[list[str], list[list[str]]]  # (header, rows) of strings


def tables(results: dict[str, Any]) -> dict[str, Table]:
    """Every table of the report as (header, rows) of strings, shared by md and html."""
    out: dict[str, Table] = {}
    if _is_task(results):
        out["accuracy"] = _accuracy_table(results)
    else:
        out["length"] = _length_table(results)
    out["training"] = _training_table(results)
    if not _is_task(results):
        out["generation"] = _generation_table(results)
    out["settings"] = (["setting", "value"], _settings_rows(results))
    return out


def _accuracy_table(results: dict[str, Any]) -> Table:
    study, aggs = results["study"], results["aggregates"]
    nmax = results["runs"][0]["task_accuracy"]["max_train_length"]
    head = ["encoding"] + [f"{n} ({n / nmax:.2g}x)" for n in study["lengths"]]
    return (head, [[a["pos"]] + [_acc_cell(results, a["pos"], c) for c in a["accuracy"]]
                   for a in aggs])


def _length_table(results: dict[str, Any]) -> Table:
    study, aggs = results["study"], results["aggregates"]
    head = ["encoding"] + [f"{_mult(n, study['block_size'])} ({n})" for n in study["lengths"]]
    rows = []
    for a in aggs:
        row = [a["pos"]]
        for c in a["length_ppl"]:
            row.append(fmt_stat(c["ppl"], 2) + _flag(c) if c["ppl"]["mean"] is not None
                       else (c["reason"] or "n/a"))
        rows.append(row)
    if study.get("unigram_ppl"):
        rows.append(["unigram baseline (no context)"]
                    + [f"{study['unigram_ppl']:.2f}"] * len(study["lengths"]))
    return head, rows


def _training_table(results: dict[str, Any]) -> Table:
    head = ["encoding", "seeds", "final val loss", "val ppl", "step time (ms)", "train time (s)",
            "tokens/s", "params", "positional params", "peak memory (MB)"]
    rows = []
    for a in results["aggregates"]:
        rows.append([a["pos"], str(a["seeds"]), fmt_stat(a["final_val_loss"]),
                     fmt_stat(a["final_val_ppl"], 2), _step_cell(results, a),
                     fmt_stat(a["train_time_s"], 1), fmt_stat(a["tokens_per_s"], integer=True),
                     fmt_stat(a["params"], integer=True), fmt_stat(a["pos_params"], integer=True),
                     fmt_stat(a["peak_mem_mb"], 0)])
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
                         fmt_stat(g["distinct_1"]), fmt_stat(g["distinct_2"]),
                         fmt_stat(g["repeated_4gram_share"]), fmt_stat(g["known_word_share"])])
    return head, rows


def _settings_rows(results: dict[str, Any]) -> list[list[str]]:
    study, env = results["study"], results["environment"]
    t = study["base_config"]["train"]
    m = study["base_config"]["model"]
    if _is_task(results):
        evaluation = (f"instance lengths {', '.join(map(str, study['lengths']))}; "
                      f"{study['task_instances']} held-out instances each")
        data = f"task {study['task']}"
    else:
        evaluation = (f"lengths {', '.join(map(str, study['lengths']))}; "
                      f"{study['eval_span_tokens']} scored tokens, stride {study['eval_stride']}")
        data = f"data {t['data']} ({t['tokenizer']})"
    return [["preset", study["preset"]], ["encodings", ", ".join(study["encodings"])],
            ["seeds", ", ".join(map(str, study["seeds"]))],
            ["run order", ", ".join(study["run_order"])],
            ["model", (f"{m['n_layer']} layers, {m['n_head']} heads, d_model {m['d_model']}, "
                      f"L = {m['block_size']}, vocabulary {m['vocab_size']}")],
            ["training", (f"{t['max_steps']} steps of {t['batch_size']}x{t['grad_accum']} "
                         f"rows, lr {t['lr']:g}, {data}")],
            ["evaluation", evaluation],
            ["environment", (f"python {env['python']}, torch {env['torch']}, minigpt "
                            f"{env['minigpt']}, {env['device']} ({env['device_name']}), "
                            f"{env['torch_threads']} threads, {env['cpu_count']} CPUs, training in "
                             f"{env.get('train_precision', 'float32')}")],
            ["created", results["created"]], ["fingerprint", study["fingerprint"]]]


def _step_cell(results: dict[str, Any], a: dict[str, Any]) -> str:
    if a["step_time_ms"]["n"] > 1:
        return fmt_stat(a["step_time_ms"], 1)
    run = next(r for r in results["runs"] if r["pos"] == a["pos"])
    st = run["training"]["step_time_ms"]
    if st["median"] is None:
        return "n/a"
    return f"{st['median']:.1f} [{st['q1']:.1f}, {st['q3']:.1f}]"


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


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    """Exact-match accuracy against instance length, the longest trained length marked."""
    study = results["study"]
    nmax = results["runs"][0]["task_accuracy"]["max_train_length"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
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
                lo, hi = m - one["ci_low"], one["ci_high"] - m
            pts.append((c["length"] * dodge, m, lo, hi))
        if not pts:
            continue
        x, y, lo, hi = zip(*pts)
        label = a["pos"] if a["extrapolates"] else f"{a['pos']} (n/a past L)"
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color=_color(a["pos"]), capsize=3,
                    label=label)
    ax.axvline(nmax, color="gray", ls="--", lw=1)
    ax.text(nmax, 1.02, " longest trained", va="bottom", color="gray", fontsize=8)
    ax.set_ylim(-0.03, 1.08)
    ax.set_xticks(study["lengths"], [str(n) for n in study["lengths"]])
    ax.set_xlabel(f"instance length ({study['task']})")
    ax.set_ylabel("exact-match accuracy (greedy)")
    bars = "±1 std over seeds" if len(study["seeds"]) > 1 else "95% Wilson intervals"
    ax.set_title(f"{study['task']}: accuracy by length ({bars})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_cost(results: dict[str, Any], path: Path) -> Path:
    aggs = results["aggregates"]
    names = [a["pos"] for a in aggs]
    colors = [_color(p) for p in names]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    panels = [("step_time_ms", "step time (ms, steady-state median)"),
              ("tokens_per_s", "tokens/s (median)"),
              ("params", "parameters (total)"), ("pos_params", "positional parameters")]
    for ax, (key, title) in zip(axes, panels):
        vals = [a[key]["mean"] or 0.0 for a in aggs]
        errs = [a[key]["std"] or 0.0 for a in aggs]
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


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    draw = {"loss_curves.png": plot_loss_curves, "length_ppl.png": plot_length_ppl,
            "position_loss.png": plot_position_loss, "cost.png": plot_cost,
            "accuracy.png": plot_accuracy}
    return [draw[name](results, out / name) for name in plots_for(results)]


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
    ("Perplexity = exp(mean cross-entropy in nats per token). Length generalization scores the "
    "same validation targets at every length with strided sliding windows: windows move by a "
    "stride s <= L/2 and score only their last s tokens, so at length T every scored token has "
    "T - s to T - 1 tokens of context (Press et al. 2022). Evaluation and sampling run in "
    "float32, whatever precision training used."),
    (f"Past-L verdicts compare perplexity at the longest length with perplexity at L: ratio "
    f"< {IMPROVES} improves, <= {FLAT} stays flat, <= {STEEP} degrades, above that degrades "
    "steeply; a change within the noise (paired bootstrap over the same windows, or the seed "
    f"spread) stays flat. An encoding whose perplexity at L is at least {NEAR_UNIGRAM:g} x the "
    "unigram baseline (training-token frequencies, no context) has not learned to use context "
    "and gets no verdict."),
    ("Noise: one encoding is called better or faster than another only when the difference "
    "exceeds the measured noise: with several seeds, twice the standard error of the "
    "difference of seed means; with one seed, a 95% bootstrap interval of the difference that "
    "excludes zero (paired over the same evaluation windows or task instances; for step times, "
    "over the steady-state log intervals of each run, and the difference must also exceed the "
    "larger interquartile range). Otherwise the report says 'within noise'."),
    ("Step time is the median milliseconds per optimizer step over log intervals of steady "
    "training (the first interval of every start and intervals containing an evaluation left "
    "out), with its interquartile range; the run order rotates by one encoding per seed."),
    ("Untrained parameters: a number marked so was computed with parameters that never "
    "received a gradient in training (e.g. T5 buckets only reached past the trained length), "
    "so it measures their initial values."),
    ("Generation metrics are over the generated words only (prompt excluded): distinct-n = "
    "unique n-grams / all n-grams; repeated 4-grams = share of 4-gram occurrences that repeat "
    "an earlier one in the same sample; known words = share of generated words that occur in "
    "the training text. Held-out ppl is the perplexity at L on the evaluation targets."),
    ("Peak memory on a CPU is the process's peak resident set size during the run (it includes "
    "the Python interpreter, PyTorch and the data); on CUDA it is the peak allocated memory."),
]

TASK_DEFINITIONS = [
    ("Exact match: an instance is correct when greedy decoding reproduces its whole answer "
    "(checked in one teacher-forced pass: at every answer position the most likely next "
    "token, given the right answer so far, is the right one). The 95% interval is Wilson's "
    "score interval for a proportion."),
    ("Instance length is {length_is}; training draws lengths from 1 to the longest whose "
    "whole example fits in L tokens. Test instances are held out: their prompts hash to a "
    "reserved residue that training never draws (Kazemnejad et al. 2023; Delétang et al. "
    "2023; Zhou et al. 2024). An encoding has learned the task when it beats guessing "
    "(accuracy {chance:g}) by more than two binomial standard deviations at some tested "
    "length up to the longest trained."),
    *DEFINITIONS[2:5],
    DEFINITIONS[-1],
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


def _sections(results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(title, intro, [table key or png name, ...]) of the report's middle, in order."""
    if _is_task(results):
        return [("Exact-match accuracy by instance length",
                 "Mean over seeds ± std, or one seed's accuracy with its 95% Wilson interval.",
                 ["accuracy", "accuracy.png"]),
                ("Training", "", ["training", "loss_curves.png", "cost.png"])]
    return [("Length generalization (validation perplexity at each evaluation length)",
             "The same validation targets at every length, strided windows.",
             ["length", "length_ppl.png", "position_loss.png"]),
            ("Training", "", ["training", "loss_curves.png", "cost.png"]),
            ("Generation quality", "", ["generation"])]


def _title(results: dict[str, Any]) -> str:
    study = results["study"]
    seeds = len(study["seeds"])
    what = f"task {study['task']}" if _is_task(results) else "language modelling"
    return (f"minigpt compare, preset `{study['preset']}`, {what}: "
            f"{plural(len(study['encodings']), 'encoding')} x {plural(seeds, 'seed')}, trained at "
            f"L = {study['block_size']} tokens. Tables show mean ± sample std over seeds where "
            "there are several.")


def _definitions(results: dict[str, Any]) -> list[str]:
    if not _is_task(results):
        return DEFINITIONS
    from .tasks import get_task

    task = get_task(results["study"]["task"])
    lengths = TASK_DEFINITIONS[1].format(length_is=task.length_is, chance=task.chance)
    return [TASK_DEFINITIONS[0], lengths, *TASK_DEFINITIONS[2:]]


def render_markdown(results: dict[str, Any]) -> str:
    study = results["study"]
    t = tables(results)
    lines = ["# Positional encodings compared", "", _title(results), "", "## Summary", "",
             results["summary"]["text"], ""]
    for title, intro, items in _sections(results):
        lines += [f"## {title}", ""] + ([intro, ""] if intro else [])
        for item in items:
            lines += [f"![{PLOTS[item]}]({item})" if item.endswith(".png")
                      else md_table(*t[item]), ""]
    samples = _samples(results)
    if samples:
        lines += [f"Samples (first seed) from the prompt {study['prompt']!r}:", ""]
    for pos, temp, text in samples:
        lines += [f"**{pos}**, temperature {temp:g}:", "", _fence(study["prompt"] + text), ""]
    lines += ["## What was held equal", ""]
    lines += [f"- {s}" for s in study["held_equal"]]
    lines += ["", "## Definitions", ""] + [f"- {s}" for s in _definitions(results)]
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

    middle = []
    for title, intro, items in _sections(results):
        middle.append(f"<h2>{e(title)}</h2>" + (f"<p>{e(intro)}</p>" if intro else ""))
        middle += [img(i) if i.endswith(".png") else html_table(*t[i]) for i in items]
    samples = _samples(results)
    if samples:
        middle.append(f"<p>Samples (first seed) from the prompt "
                      f"<code>{e(repr(study['prompt']))}</code>:</p>")
    for pos, temp, text in samples:
        middle.append(f"<details{' open' if temp == study['temperatures'][0] else ''}>"
                      f"<summary><b>{e(pos)}</b>, temperature {temp:g}</summary>"
                      f"<pre>{e(study['prompt'] + text)}</pre></details>")
    title = _title(results).replace(f"`{study['preset']}`", f"<code>{e(study['preset'])}</code>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>minigpt: positional encodings compared</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>Positional encodings compared</h1>",
        f'<p class="meta">{title} Created {e(results["created"])}.</p>',
        "<h2>Summary</h2>",
        f'<p id="summary">{e(results["summary"]["text"])}</p>',
        *middle,
        "<h2>What was held equal</h2>",
        "<ul>" + "".join(f"<li>{e(s)}</li>" for s in study["held_equal"]) + "</ul>",
        "<h2>Definitions</h2>",
        "<ul>" + "".join(f"<li>{e(s)}</li>" for s in _definitions(results)) + "</ul>",
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
