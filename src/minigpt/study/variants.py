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

This module says what the variants are (their configs, the rope checkpoints a study may
adopt with --rope-checkpoints, their part of results.json); variant_runs.py runs them and
extension.py reads them in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from ..config import RopeScaling, RunConfig, merge
from ..errors import ConfigError
from .diffs import config_diff
from .parsing import parse_list
from .stats import mean_std

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


# --- existing rope checkpoints as the study's rope runs (--rope-checkpoints) ------------------

def adopt(st: Any, names: list[str], model: dict[str, Any], train: dict[str, Any]
          ) -> tuple[RunConfig, dict[int, Path]]:
    """The study's base config and {seed: checkpoint} from existing rope checkpoints: one per
    seed, equal in every setting but the seed (what a study holds equal)."""
    from ..checkpoint import read_config
    from ..errors import arg

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


AGGREGATE_SCHEMA = {"extension": {
    "type": "object", "description": "context-extension variants only: the method and the "
    "fine-tune's mean cost over seeds", "required": ["scaling", "factor", "finetune_steps",
                                                     "finetune_time_s", "finetune_tokens"]}}


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
    if not is_variant(rs[0]):
        return {}
    e = rs[0]["extension"]
    return {"extension": {
        **{k: e[k] for k in ("label", "base", "scaling", "factor", "finetune_steps")},
        "finetune_time_s": mean_std(r["extension"]["finetune"]["time_s"] for r in rs),
        "finetune_tokens": mean_std(r["extension"]["finetune"]["tokens"] for r in rs)}}


