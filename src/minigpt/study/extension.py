"""Context extension in the study: a RoPE run trained at L, run at s x L by a method of
`rope_scaling` (positional.py: linear = position interpolation, ntk, dynamic, yarn, llama3),
zero-shot and after a short fine-tune at s x L. Each (method, factor, fine-tuned or not) is a
*variant* of the rope runs: one more contender in the study, named like rope+yarn4x or
rope+yarn4x+ft, with one record per seed built from that seed's rope run, and read by the
objective like any encoding (perplexity at L..8L against the window baseline, the tasks past
L), plus what it cost.

    runs/rope-s0/             the rope run (trained at L as usual)
    runs/rope+yarn4x-s0/      result.json only: the rope run's weights loaded with yarn, s = 4
    runs/rope+yarn4x+ft-s0/   a checkpoint: the rope run fine-tuned at 4L with yarn, s = 4

Choices, each from its paper. The fine-tune is short and gentle, as in Chen et al. 2023 (PI)
and Peng et al. 2023 (YaRN): a fixed number of steps (`--finetune-steps`) at a constant small
learning rate (the run's min_lr unless --finetune-lr; 10 % linear warm-up), at block size
s x L with the run's batch size, so each step sees s times the tokens of a training step.
`dynamic` is zero-shot only: its factor follows the sequence length at inference (the
transformers `dynamic` type; Peng et al. 2023 section 3.3), so there is nothing fixed to
fine-tune. `none` is plain RoPE fine-tuned at s x L (the "direct extrapolation" fine-tune
PI is compared against); zero-shot it would be the rope run itself. Fine-tuned variants train
from the rope run of the same seed, so the seed pairs them with it in every comparison.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from ..config import RopeScaling, RunConfig, merge
from ..errors import ConfigError, MiniGPTError
from ..files import atomic_write_json
from .parsing import parse_list

METHODS = tuple(m for m in get_args(RopeScaling))  # none, linear, ntk, dynamic, yarn, llama3
ZERO_SHOT_ONLY = ("dynamic",)
EXTENDS = "rope"  # the encoding whose runs are extended (the one with extension settings)
METHOD_COLOURS = {"none": 0, "linear": 1, "ntk": 6, "dynamic": 3, "yarn": 4, "llama3": 5}  # Dark2


@dataclass(frozen=True)
class Variant:
    """One contender built from the rope runs: a method, a factor, fine-tuned or not."""

    scaling: str
    factor: float
    finetune_steps: int  # 0: zero-shot

    @property
    def label(self) -> str:
        return f"{EXTENDS}+{self.scaling}{self.factor:g}x" + ("+ft" if self.finetune_steps else "")

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "base": EXTENDS, "scaling": self.scaling,
                "factor": self.factor, "finetune_steps": self.finetune_steps}


def parse_variants(methods: str | None, factors: str | None, finetune_steps: int,
                   encodings: list[str]) -> list[Variant]:
    """The study's variants: every method at every factor, zero-shot (all but none) and
    fine-tuned (all but dynamic, when finetune_steps > 0)."""
    if methods is None:
        return []
    names = parse_list(methods)
    wrong = [m for m in names if m not in METHODS]
    if wrong or not names:
        raise ConfigError(f"--extend: unknown method(s) {', '.join(wrong) or '(none given)'}; "
                          f"choose from {', '.join(METHODS)}.")
    if EXTENDS not in encodings:
        raise ConfigError(f"--extend evaluates context extension of the {EXTENDS} runs; add "
                          f"{EXTENDS} to --pos.")
    try:
        scales = [float(f) for f in parse_list(factors or "2,4")]
    except ValueError:
        raise ConfigError(f"--extend-factors must be numbers above 1 such as 2,4, got "
                          f"{factors!r}.") from None
    if not scales or any(not 1 < f <= 64 for f in scales):
        raise ConfigError(f"--extend-factors must be numbers above 1 and at most 64, got "
                          f"{factors!r}.")
    if not finetune_steps and names == ["none"]:
        raise ConfigError("--extend none is plain RoPE fine-tuned at the longer length; give "
                          "--finetune-steps above 0 or another method.")
    out = []
    for f in dict.fromkeys(scales):
        for m in dict.fromkeys(names):
            if m != "none":
                out.append(Variant(m, f, 0))
            if finetune_steps and m not in ZERO_SHOT_ONLY:
                out.append(Variant(m, f, finetune_steps))
    return out


def finetune_lr(study: Any) -> float:
    return study.settings.finetune_lr or study.base.train.min_lr


def variant_config(study: Any, v: Variant, seed: int) -> RunConfig:
    """The config a variant's model runs with: the rope run's, with the method and factor,
    and for a fine-tune the longer block and the fine-tune's steps and learning rate."""
    base = study.run_config(EXTENDS, seed)
    L = base.model.block_size
    model = {"rope_scaling": v.scaling, "rope_factor": 1.0 if v.scaling == "none" else v.factor,
             "rope_original_length": L}
    train: dict[str, Any] = {"sample_tokens": 0}  # the rope run's samples stand for them
    if v.finetune_steps:
        lr = finetune_lr(study)
        model["block_size"] = round(v.factor * L)  # and what derives from it stays the run's:
        model["t5_max_distance"] = base.model.t5_max_distance  # (as --init-from keeps it)
        train.update(max_steps=v.finetune_steps, lr=lr, min_lr=lr, lr_decay_steps=0,
                     warmup_steps=max(1, v.finetune_steps // 10),
                     eval_interval=v.finetune_steps)
    return merge(base, model, train, where=f"variant {v.label}-s{seed}")


def _base_stamp(run_dir: Path) -> dict[str, Any]:
    """What identifies the rope run a variant was made from: a retrained one changes it."""
    from ..checkpoint import weights_path

    try:
        st = weights_path(run_dir, "last").stat()
    except (OSError, MiniGPTError):  # no weights yet: nothing to match
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def do_variant(job: Any, v: Variant, log: Any, data: Any = None) -> str:
    """Evaluate (zero-shot) or fine-tune and evaluate one variant of one seed's rope run;
    'trained', 'evaluated', 'skipped' or 'interrupted'."""
    from .. import checkpoint
    from ..runtime import resolve_device
    from ..training import train
    from .records import run_record
    from .runs import _STOP, ensure_prepared, run_state, uses_criterion

    from .settings import run_name

    study, run_dir = job.study, job.out / "runs" / job.name
    src = study.model_dir(job.out, EXTENDS, job.seed)  # the rope run's weights
    base_name = run_name(EXTENDS, job.seed)
    tag = f"[{job.index}/{len(study.runs())}] {job.name}"
    cfg = merge(variant_config(study, v, job.seed), {"vocab_size": job.vocab}, {},
                where=f"variant {job.name}")
    stamp = {"eval": study.eval_fingerprint(), "base": _base_stamp(src)}
    if not (job.out / "runs" / base_name / "result.json").exists():
        raise ConfigError(f"{job.name} needs the finished {EXTENDS} run {base_name}; run the "
                          "study again to train it first.")
    if _STOP["requested"]:
        return "interrupted"
    if data is None:
        data = study.objective.data(study, False)
    started = time.perf_counter()
    if v.finetune_steps:
        prev = _stamp(run_dir)
        if prev and prev.get("base") != stamp["base"] and run_dir.exists():
            shutil.rmtree(run_dir)  # the rope run was retrained: so is its fine-tune
        state, step = run_state(run_dir, cfg, study, job.force)
        if state == "done" and _stamp(run_dir) == stamp:
            log(f"{tag}: finished earlier, skipped")
            return "skipped"
        if state in ("fresh", "partial"):
            log(f"{tag}: fine-tuning {base_name} at {cfg.model.block_size} tokens with "
                f"{v.scaling}, {v.finetune_steps} steps" +
                (f" (resuming from step {step})" if step else ""))
            ft_data = study.objective.finetune_data(study, data, cfg.model.block_size)
            res = train(cfg, run_dir, resume=state == "partial", data=ft_data,
                        init_from=None if state == "partial" else src,
                        progress=job.progress, log=log)
            if res.interrupted or _STOP["requested"]:
                return "interrupted"
        model_dir, extension = run_dir, None
    else:
        if _stamp(run_dir) == stamp:
            log(f"{tag}: finished earlier, skipped")
            return "skipped"
        model_dir = src
        extension = {"rope_scaling": v.scaling, "rope_factor": v.factor}
        log(f"{tag}: evaluating {base_name} zero-shot with {v.scaling}, factor {v.factor:g}")
    ensure_prepared(study, data)
    model, tok, _, _ = checkpoint.load(model_dir, device=resolve_device(cfg.train.device),
                                       extension=extension)
    record = run_record(model, cfg, src, job.name, study.objective.evaluate(model, tok, cfg,
                                                                            study))
    base_rec = read_json_dict(job.out / "runs" / base_name / "result.json")
    cost: dict[str, Any]
    if v.finetune_steps:  # the fine-tune's own cost; convergence stays the rope run's
        ft_rec = run_record(model, cfg, run_dir, job.name, {})["training"]
        cost = {"steps": ft_rec["steps"], "time_s": ft_rec["train_time_s"],
                "tokens": ft_rec["steps"] * cfg.train.batch_size * cfg.train.grad_accum
                * cfg.model.block_size, "final_val_loss": ft_rec["final_val_loss"]}
        record["dir"] = f"runs/{job.name}"
    else:
        cost = {"steps": 0, "time_s": 0.0, "tokens": 0, "final_val_loss": None}
        record["dir"] = _dir_text(job.out, src)
    if uses_criterion(study):
        record["training"]["checks"] = base_rec.get("training", {}).get("checks", [])
        record["training"]["criterion"] = study.settings.criterion
    record["pos"] = v.label
    record["extension"] = {**v.as_dict(), "base_run": base_name, "finetune": cost,
                           "eval_s": time.perf_counter() - started}
    _write(run_dir, record, study, stamp)
    return "trained" if v.finetune_steps else "evaluated"


def _dir_text(out: Path, path: Path) -> str:
    """A run folder as results.json names it: relative to the study, or an adopted one's."""
    return f"runs/{path.name}" if path.parent == out / "runs" else str(path.resolve())


def _write(run_dir: Path, record: dict[str, Any], study: Any, stamp: dict[str, Any]) -> None:
    record["eval_fingerprint"] = study.eval_fingerprint()
    record["variant_stamp"] = stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "result.json", record)


# --- existing rope checkpoints as the study's rope runs (--rope-checkpoints) ------------------

def adopt(st: Any, names: list[str], model: dict[str, Any], train: dict[str, Any]
          ) -> tuple[RunConfig, dict[int, Path]]:
    """The study's base config and {seed: checkpoint} from existing rope checkpoints: one per
    seed, equal in every setting but the seed (what a study holds equal)."""
    from ..checkpoint import read_config
    from ..errors import arg
    from .settings import config_diff

    if model:
        raise ConfigError(f"--rope-checkpoints takes the model settings from the checkpoints; "
                          f"drop {', '.join(arg(k) for k in model)}.")
    if st.seeds is not None:
        raise ConfigError("--rope-checkpoints gives one seed per checkpoint; drop --seeds.")
    if EXTENDS not in names:
        raise ConfigError(f"--rope-checkpoints are the {EXTENDS} runs; keep {EXTENDS} in --pos.")
    paths = [Path(p) for p in parse_list(st.rope_checkpoints)]
    if not paths:
        raise ConfigError("--rope-checkpoints needs at least one checkpoint directory.")
    cfgs = [read_config(p)[0] for p in paths]  # a bad folder: CheckpointError, one sentence
    for p, c in zip(paths, cfgs):
        if c.model.pos != EXTENDS or c.model.rope_scaling != "none":
            what = (f"not a {EXTENDS} checkpoint (its encoding is {c.model.pos})"
                    if c.model.pos != EXTENDS else
                    f"trained with rope_scaling {c.model.rope_scaling}")
            raise ConfigError(f"--rope-checkpoints: {p} is {what}; give checkpoints of plain "
                              f"{EXTENDS} runs trained at one length.")
    seeds = [c.train.seed for c in cfgs]
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--rope-checkpoints: two checkpoints share a seed ({seeds}); a study "
                          "takes one run per seed.")
    for p, c in zip(paths[1:], cfgs[1:]):
        diff = config_diff(merge(cfgs[0], {}, {"seed": c.train.seed}, where=str(paths[0])), c)
        if diff:
            raise ConfigError(f"--rope-checkpoints: {p} differs from {paths[0]} in "
                              f"{'; '.join(diff[:3])}; a study holds everything but the seed "
                              "equal.")
    base = merge(cfgs[0], {"pos": names[0]}, train, where="command line")
    return base, dict(zip(seeds, paths))


def do_adopted(job: Any, src: Path, log: Any, data: Any = None) -> str:
    """Evaluate an adopted checkpoint as this seed's rope run (never trained or changed)."""
    from .. import checkpoint
    from ..runtime import resolve_device
    from .records import run_record
    from .runs import ensure_prepared, uses_criterion

    study, run_dir = job.study, job.out / "runs" / job.name
    tag = f"[{job.index}/{len(study.runs())}] {job.name}"
    stamp = {"eval": study.eval_fingerprint(), "base": _base_stamp(src)}
    if _stamp(run_dir) == stamp:
        log(f"{tag}: finished earlier, skipped")
        return "skipped"
    log(f"{tag}: evaluating the existing checkpoint {src}")
    if data is None:
        data = study.objective.data(study, False)
    ensure_prepared(study, data)
    model, tok, cfg, raw = checkpoint.load(src, device=resolve_device(study.base.train.device))
    record = run_record(model, cfg, src, job.name, study.objective.evaluate(model, tok, cfg,
                                                                            study))
    record["dir"] = _dir_text(job.out, src)
    if uses_criterion(study):  # one convergence check, as if training had stopped here
        acc = study.objective.converged(model, study, data)
        record["training"]["checks"] = [{"step": int(raw.get("step", 0)), "val_accuracy": acc}]
        record["training"]["criterion"] = study.settings.criterion
    _write(run_dir, record, study, stamp)
    return "evaluated"


def read_json_dict(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _stamp(run_dir: Path) -> Any:
    return read_json_dict(run_dir / "result.json").get("variant_stamp")


# --- results.json ------------------------------------------------------------------------------

RUN_SCHEMA = {"extension": {
    "type": "object", "description": "context-extension variants only: the method, factor and "
    "fine-tune applied to the rope run of the same seed, and the fine-tune's cost",
    "required": ["label", "base", "scaling", "factor", "finetune_steps", "base_run", "finetune"],
    "properties": {"scaling": {"type": "string"}, "factor": {"type": "number"},
                   "finetune_steps": {"type": "integer"},
                   "base_run": {"type": "string"},
                   "finetune": {"type": "object", "required": ["steps", "time_s", "tokens"],
                                "description": "steps, seconds and tokens of the fine-tune "
                                "at factor x L (all 0 zero-shot)"}}}}
STUDY_SCHEMA = {"extension": {
    "type": "object", "description": "the context-extension variants evaluated (none: {})",
    "properties": {"variants": {"type": "array"}, "factors": {"type": "array"},
                   "finetune_steps": {"type": "integer"}, "finetune_lr": {"type": "number"}}}}


def study_fields(study: Any) -> dict[str, Any]:
    if not study.variants:
        return {}
    return {"variants": [v.as_dict() for v in study.variants],
            "factors": sorted({v.factor for v in study.variants}),
            "finetune_steps": max(v.finetune_steps for v in study.variants),
            "finetune_lr": finetune_lr(study)}


# --- reading the variants ----------------------------------------------------------------------

def is_variant(item: dict[str, Any]) -> bool:
    """Whether a run record or aggregate is a variant (not an encoding trained at L)."""
    return "extension" in item


def encodings_only(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with the variants left out: what the encodings' own reading (summary,
    tables, plots) is about. The variants have their own section."""
    if not results["study"].get("extension"):
        return results
    study = dict(results["study"])
    study["encodings"] = [p for p in study["encodings"] if "+" not in p]
    return {**results, "study": study,
            "runs": [r for r in results["runs"] if not is_variant(r)],
            "aggregates": [a for a in results["aggregates"] if not is_variant(a)]}


def aggregate_fields(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's aggregate: its method and the fine-tune's mean cost over seeds."""
    from .stats import mean_std

    if not is_variant(rs[0]):
        return {}
    e = rs[0]["extension"]
    return {"extension": {
        **{k: e[k] for k in ("label", "base", "scaling", "factor", "finetune_steps")},
        "finetune_time_s": mean_std(r["extension"]["finetune"]["time_s"] for r in rs),
        "finetune_tokens": mean_std(r["extension"]["finetune"]["tokens"] for r in rs)}}


AGGREGATE_SCHEMA = {"extension": {
    "type": "object", "description": "context-extension variants only: the method and the "
    "fine-tune's mean cost over seeds", "required": ["scaling", "factor", "finetune_steps",
                                                     "finetune_time_s", "finetune_tokens"]}}


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
    from .summary import rank

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
    from .summary import join, noise_words

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
    from .summary import fmt_stat

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
    from .figures import color, legend_outside, mark_L, plt, save
    from .render import objective_of

    objective = objective_of(results)
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
