"""results.json -> report.md and a self-contained report.html (every plot embedded as a data
URI, nothing else loaded, so it opens from disk with no server and no network), with the
tables every study shares (training, settings) and the objective's own."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..text import plural
from .variants import encodings_only
from .extension import plot as ext_plot
from .extension import table as ext_table
from .figures import GENERIC_PLOTS
from .objective import Objective, Table
from .registry import get_objective
from .summary import fmt_stat

GENERIC_DEFINITIONS = [
    ("Noise: with two or more seeds, one encoding is called better or faster than another only "
     "when a paired hierarchical bootstrap (resample seeds, then evaluation items within each; "
     "neighbouring text windows resampled in blocks) puts the difference beyond noise after "
     "Holm's correction over every comparison the summary makes (family-wise error 5%). With "
     "one seed the summary describes and never ranks: one trained model's evaluation items "
     "cannot show training noise."),
    ("Step time is the median milliseconds per optimizer step over log intervals of steady "
     "training (the first interval of every start and intervals containing an evaluation left "
     "out), with its interquartile range; the run order rotates by one encoding per seed."),
    ("Untrained parameters: a number marked so was computed with parameters that never "
     "received a gradient in training (e.g. T5 buckets only reached past the trained length), "
     "so it measures their initial values."),
    ("Validation loss during training is an estimate from a few random batches at each "
     "evaluation (eval_iters); the evaluation tables score fixed held-out items and are the "
     "numbers the summary uses."),
    ("Peak memory on a CPU is the process's peak resident set size during the run (it includes "
     "the Python interpreter, PyTorch and the data); on CUDA it is the peak allocated memory."),
]


def objective_of(results: dict[str, Any]) -> Objective:
    return get_objective(results["study"]["task"])


def plots_for(results: dict[str, Any]) -> dict[str, Any]:
    extension = ({"extension.png": ("Context extension of the rope runs: each factor's "
                                    "variants against the encodings trained at L", ext_plot)}
                 if results["study"].get("extension") else {})
    return {**objective_of(results).plots(), **GENERIC_PLOTS, **extension}


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """The encodings' plots from their own runs; the extension plot from all."""
    own = encodings_only(results)
    return [draw(results if name == "extension.png" else own, out / name)
            for name, (_, draw) in plots_for(results).items()]


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


def tables(results: dict[str, Any]) -> dict[str, Table]:
    """Every table of the report as (header, rows) of strings, shared by md and html."""
    own = encodings_only(results)
    extension = ({"extension": ext_table(results, objective_of(results))}
                 if results["study"].get("extension") else {})
    return {**objective_of(results).tables(own), "training": _training_table(own),
            **extension, "settings": (["setting", "value"], _settings_rows(results))}


def _step_cell(results: dict[str, Any], a: dict[str, Any]) -> str:
    if a["step_time_ms"]["n"] > 1:
        return fmt_stat(a["step_time_ms"], 1)
    run = next(r for r in results["runs"] if r["pos"] == a["pos"])
    st = run["training"]["step_time_ms"]
    if st["median"] is None:
        return "n/a"
    return f"{st['median']:.1f} [{st['q1']:.1f}, {st['q3']:.1f}]"


def _training_table(results: dict[str, Any]) -> Table:
    head = ["encoding", "seeds", "steps", "val loss during training (estimate)", "step time (ms)",
            "train time (s)", "tokens/s", "params", "positional params", "learned scale",
            "peak memory (MB)"]
    rows = []
    for a in results["aggregates"]:
        scale = a.get("pos_state", {}).get("scale")
        rows.append([a["pos"], str(a["seeds"]), fmt_stat(a["steps"], integer=True),
                     fmt_stat(a["final_val_loss"]), _step_cell(results, a),
                     fmt_stat(a["train_time_s"], 1), fmt_stat(a["tokens_per_s"], integer=True),
                     fmt_stat(a["params"], integer=True), fmt_stat(a["pos_params"], integer=True),
                     fmt_stat(scale, 3) if scale else "", fmt_stat(a["peak_mem_mb"], 0)])
    return head, rows


def _settings_rows(results: dict[str, Any]) -> list[list[str]]:
    study, env = results["study"], results["environment"]
    t, m = study["base_config"]["train"], study["base_config"]["model"]
    return [["preset", study["preset"]], ["objective", study["task"]],
            ["encodings", ", ".join(study["encodings"])],
            ["seeds", ", ".join(map(str, study["seeds"]))],
            ["run order", ", ".join(study["run_order"])],
            ["model", (f"{m['n_layer']} layers, {m['n_head']} heads, d_model {m['d_model']}, "
                       f"L = {m['block_size']}, vocabulary {m['vocab_size']}")],
            ["training", (f"at most {t['max_steps']} steps of {t['batch_size']}x{t['grad_accum']}"
                          f" rows, lr {t['lr']:g}, data {t['data']} ({t['tokenizer']})")],
            ["evaluation lengths", ", ".join(map(str, study["lengths"]))],
            ["environment", (f"python {env['python']}, torch {env['torch']}, minigpt "
                             f"{env['minigpt']}, {env['device']} ({env['device_name']}; "
                             f"{env.get('cpu_flags', 'unknown')}), {env['jobs']} run(s) at a "
                             f"time with {env['torch_threads']} thread(s) each, "
                             f"{env['cpu_count']} CPUs, training in {env['train_precision']}")],
            ["wall time", f"{study.get('wall_s', 0):.0f} s for this invocation"],
            ["created", results["created"]], ["fingerprint", study["fingerprint"]]]


def _sections(results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    extension = [("Context extension (rope runs at s x L)", EXTENSION_INTRO,
                  ["extension", "extension.png"])] if results["study"].get("extension") else []
    return [*objective_of(results).sections(encodings_only(results)), *extension,
            ("Training", "", ["training", "loss_curves.png", "cost.png"])]


EXTENSION_INTRO = (
    "Each rope run trained at L, run at s x L by a context-extension method (rope_scaling): "
    "zero-shot (its weights as trained) and, marked +ft, fine-tuned from it at s x L for the "
    "steps shown. Fine-tune time is wall time per run, several runs sharing the machine. "
    "The encodings trained at L are repeated for reference.")


def _title(results: dict[str, Any]) -> str:
    study = results["study"]
    return (f"minigpt compare, preset `{study['preset']}`, {objective_of(results).title}: "
            f"{plural(len(study['encodings']), 'encoding')} x "
            f"{plural(len(study['seeds']), 'seed')}, trained at L = {study['block_size']} tokens. "
            "Tables show mean ± sample std over seeds where there are several.")


def _definitions(results: dict[str, Any]) -> list[str]:
    return [*objective_of(results).definitions(results), *GENERIC_DEFINITIONS]


def _fence(text: str) -> str:
    fence = "~~~~" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"


def render_markdown(results: dict[str, Any]) -> str:
    study = results["study"]
    t = tables(results)
    captions = {k: v[0] for k, v in plots_for(results).items()}
    lines = ["# Positional encodings compared", "", _title(results), "", "## Summary", "",
             results["summary"]["text"], ""]
    for title, intro, items in _sections(results):
        lines += [f"## {title}", ""] + ([intro, ""] if intro else [])
        for item in items:
            lines += [f"![{captions[item]}]({item})" if item.endswith(".png")
                      else md_table(*t[item]), ""]
    samples = objective_of(results).samples(results)
    if samples:
        lines += [f"Samples (first seed) from the prompt {study['prompt']!r}:", ""]
    for pos, temp, text in samples:
        lines += [f"**{pos}**, temperature {temp:g}:", "", _fence(study["prompt"] + text), ""]
    lines += ["## What was held equal", ""] + [f"- {s}" for s in study["held_equal"]]
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
    captions = {k: v[0] for k, v in plots_for(results).items()}

    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{e(captions[name])}">'

    middle = []
    for title, intro, items in _sections(results):
        middle.append(f"<h2>{e(title)}</h2>" + (f"<p>{e(intro)}</p>" if intro else ""))
        middle += [img(i) if i.endswith(".png") else html_table(*t[i]) for i in items]
    samples = objective_of(results).samples(results)
    if samples:
        middle.append(f"<p>Samples (first seed) from the prompt "
                      f"<code>{e(repr(study['prompt']))}</code>:</p>")
    for pos, temp, text in samples:
        middle.append(f"<details{' open' if temp == study['temperatures'][0] else ''}>"
                      f"<summary><b>{e(pos)}</b>, temperature {temp:g}</summary>"
                      f"<pre>{e(study['prompt'] + text)}</pre></details>")
    title = _title(results).replace(f"`{study['preset']}`", f"<code>{e(study['preset'])}</code>")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>minigpt: positional encodings compared</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>Positional encodings compared</h1>",
        f'<p class="meta">{title} Created {e(results["created"])}.</p>',
        "<h2>Summary</h2>", f'<p id="summary">{e(results["summary"]["text"])}</p>',
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
