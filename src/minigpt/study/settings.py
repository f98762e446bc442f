"""What defines a study: `StudySettings` (typed, with the same `setting()` metadata as the
model and train configs, so `compare`'s flags, help and checks are generated from it), and
`Study`, the settings resolved against a preset into validated run configurations.

A study trains one model per (encoding, seed) with everything but the encoding held equal,
then scores them with its objective (language modelling or an algorithmic task).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import STUDY_PRESETS, RunConfig, merge, preset, setting
from ..errors import ConfigError, MiniGPTError
from ..results_schema import SCHEMA_VERSION
from .diffs import NOT_FINGERPRINTED, config_diff, diff_settings  # noqa: F401  (the API)
from .parsing import parse_lengths, parse_list  # noqa: F401  (part of the study's API)

DEFAULT_ENCODINGS = ["learned", "sinusoidal", "rope", "alibi", "nope", "fire", "kerple"]
EVAL_VERSION = 3  # bump when an evaluation's numbers change meaning (forces re-evaluation)


@dataclass
class StudySettings:
    """The study's own settings; None (not given) means the preset's value or the default the
    help names."""

    preset: str = setting("quick", "study preset: quick (minutes on a laptop CPU) or full "
                          "(longer training, 3 seeds; for a GPU)", metavar="NAME")
    task: str = setting("lm", "what the models learn: lm (language modelling on --data) or an "
                        "algorithmic task scored by exact match (copy, reverse, add, recall, "
                        "passkey)", metavar="NAME")
    pos: str | None = setting(
        None, "encodings to compare, comma-separated", metavar="A,B,...",
        default_text=",".join(DEFAULT_ENCODINGS))
    seeds: int | None = setting(
        None, "seeds per encoding: --seed, --seed+1, ...; a ranking needs 2 or more",
        default_text="quick 1, full 3")
    lengths: str | None = setting(
        None, "evaluation lengths. lm: multiples of L such as 1x,2x,4x,8x or token counts; L "
        "is always included. Tasks: instance lengths as multiples of the longest trained "
        "(0.5x,1x,1.5x,2x,3x,4x) or counts", metavar="LIST", default_text="the preset's")
    eval_tokens: int | None = setting(
        None, "lm: validation targets scored at every length, spread over the validation text",
        default_text="quick 8192, full 32768")
    eval_stride: int | None = setting(
        None, "lm: windows move by N tokens and score their last N, so every scored token has "
        "T-N to T-1 tokens of context", default_text="L/2")
    task_instances: int | None = setting(None, "tasks: held-out instances per test length",
                                         default_text="quick 200, full 500")
    criterion: float = setting(0.95, "tasks: train until validation accuracy at the longest "
                               "trained length reaches this (or --max-steps ends); only runs "
                               "that reach it are read past L", metavar="FLOAT")
    check_every: int = setting(250, "tasks: steps between convergence checks")
    val_instances: int = setting(200, "tasks: validation instances per convergence check")
    extend: str | None = setting(
        None, "rope context extension: methods evaluated on every rope run, comma-separated "
        "(linear, ntk, dynamic, yarn, llama3; none = plain rope, fine-tuned only), each "
        "zero-shot and after a short fine-tune at every --extend-factors multiple of L",
        metavar="A,B,...")
    extend_factors: str = setting("2,4", "with --extend: the factors s (each method runs at "
                                  "s x L)", metavar="LIST")
    finetune_steps: int | None = setting(
        None, "with --extend: fine-tune steps at s x L from each rope run (0: zero-shot only)",
        default_text="quick 100, full 400")
    finetune_lr: float | None = setting(None, "with --extend: the fine-tune's constant learning "
                                        "rate", metavar="FLOAT", default_text="the run's min-lr")
    rope_checkpoints: str | None = setting(
        None, "existing rope checkpoints, one per seed, used as the study's rope runs instead of "
        "training them (the study takes its model, data and training settings from them; "
        "with --extend)", metavar="A,B,...")
    jobs: int | None = setting(
        None, "runs trained at once, each in its own process with its share of the threads "
        "(one per GPU on several GPUs)", default_text="one per CPU core, or per GPU; printed")

    def __post_init__(self) -> None:
        from .registry import objective_names

        if self.preset not in STUDY_PRESETS:
            raise ConfigError(f"unknown study preset {self.preset!r}; choose one of "
                              f"{', '.join(STUDY_PRESETS)}.")
        if self.task not in objective_names():
            raise ConfigError(f"unknown task {self.task!r}; choose lm or one of "
                              f"{', '.join(n for n in objective_names() if n != 'lm')}.")
        for name, hi in (("seeds", 100), ("eval_tokens", 1 << 30), ("eval_stride", 1 << 20),
                         ("task_instances", 1 << 20), ("jobs", 1024)):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number from 1 "
                                  f"to {hi}, got {v}.")
        if self.finetune_steps is not None and (
                not isinstance(self.finetune_steps, int) or isinstance(self.finetune_steps, bool)
                or not 0 <= self.finetune_steps <= 1 << 30):
            raise ConfigError(f"--finetune-steps must be a whole number from 0, got "
                              f"{self.finetune_steps}.")
        lr = self.finetune_lr
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool)
                               or not 0 < lr <= 10):
            raise ConfigError(f"--finetune-lr must be a learning rate in (0, 10], got {lr}.")
        for name in ("check_every", "val_instances"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole "
                                  f"number, got {v}.")
        c = self.criterion
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0 < c <= 1:
            raise ConfigError(f"--criterion must be an accuracy in (0, 1], got {c}.")


def parse_encodings(spec: str | list[str] | None) -> list[str]:
    from ..positional import REGISTRY

    names = parse_list(spec) if spec is not None else list(DEFAULT_ENCODINGS)
    if not names:
        raise ConfigError("--pos needs at least one positional encoding.")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"--pos: unknown encoding(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(REGISTRY)}.")
    return list(dict.fromkeys(names))


@dataclass
class Study:
    """Everything that defines a study, resolved; `fingerprint` identifies it in study.json."""

    settings: StudySettings
    encodings: list[str]
    seeds: list[int]
    lengths: list[int]  # tokens (lm) or instance lengths (tasks)
    eval_tokens: int
    eval_stride: int
    task_instances: int
    base: RunConfig  # the shared configuration (its pos and seed are overridden per run)
    objective: Any  # an Objective (objective.py)
    variants: list[Any] = field(default_factory=list)  # extension.Variant: rope extended
    adopted: dict[int, Path] = field(default_factory=dict)  # seed -> existing rope checkpoint

    @property
    def contenders(self) -> list[str]:
        """What the study compares: the encodings, then the variants of the rope runs."""
        return self.encodings + [v.label for v in self.variants]

    def model_dir(self, out: Path, pos: str, seed: int) -> Path:
        """Where a run's weights are: its folder under out/runs, or the existing checkpoint
        the study adopted as that seed's rope run (--rope-checkpoints)."""
        if pos == "rope" and seed in self.adopted:
            return self.adopted[seed]
        return out / "runs" / run_name(pos, seed)

    def tokenizer_path(self) -> Path | None:
        """The tokenizer the study's data is encoded with: the adopted checkpoints' (the
        weights only read that one), else None (built from the data as in training)."""
        if not self.adopted:
            return None
        return next(iter(self.adopted.values())) / "tokenizer.json"

    def variant(self, name: str) -> Any:
        """The extension.Variant a contender names, or None for an encoding."""
        return next((v for v in self.variants if v.label == name), None)

    @property
    def preset(self) -> str:
        return self.settings.preset

    @property
    def task(self) -> str:
        return self.settings.task

    @property
    def block_size(self) -> int:
        return self.base.model.block_size

    def run_config(self, pos: str, seed: int) -> RunConfig:
        """The config of one run: an encoding's, or a variant's (extension.variant_config)."""
        v = self.variant(pos)
        if v is not None:
            from .variants import variant_config

            return variant_config(self, v, seed)
        return merge(self.base, {"pos": pos}, {"seed": seed}, where=f"run {pos}-s{seed}")

    def runs(self) -> list[tuple[str, str, int]]:
        """(name, pos, seed) in training order: all encodings of a seed, then the next seed,
        so an interrupted study already holds complete comparisons for its first seeds. The
        encoding order rotates by one place per seed, so no encoding always runs last. The
        variants of a seed follow its encodings (they start from its rope run)."""
        out = []
        for i, s in enumerate(self.seeds):
            k = i % len(self.encodings)
            out += [(run_name(p, s), p, s) for p in self.encodings[k:] + self.encodings[:k]]
            out += [(run_name(v.label, s), v.label, s) for v in self.variants]
        return out

    def eval_settings(self) -> dict[str, Any]:
        return self.objective.eval_settings(self)

    def as_dict(self) -> dict[str, Any]:
        """The fingerprinted settings (what makes it this study)."""
        cfg = self.base.to_dict()
        cfg["model"].pop("pos")
        cfg["train"].pop("seed")
        for k in NOT_FINGERPRINTED:
            cfg["train"].pop(k, None)
        return {"schema_version": SCHEMA_VERSION, "preset": self.preset, "task": self.task,
                "encodings": self.encodings, "seeds": self.seeds, "lengths": self.lengths,
                **self.eval_settings(), **self.objective.training_settings(self),
                **self.extension_settings(), "config": cfg,
                **({"rope_checkpoints": [str(p) for p in self.adopted.values()]}
                   if self.adopted else {})}

    def extension_settings(self) -> dict[str, Any]:
        """The variants' settings (absent without --extend: older studies keep their
        fingerprint)."""
        from .variants import study_fields

        return {"extension": study_fields(self)} if self.variants else {}

    def fingerprint(self) -> str:
        return _hash(self.as_dict())

    def eval_fingerprint(self) -> str:
        t = self.base.train
        return _hash({"eval_version": EVAL_VERSION, "lengths": self.lengths,
                      **self.eval_settings(), "prompt": t.sample_prompt,
                      "temperatures": t.sample_temperatures, "tokens": t.sample_tokens})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_name(pos: str, seed: int) -> str:
    return f"{pos}-s{seed}"


def make_study(preset_name: str = "quick", *, model: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None, **settings: Any) -> Study:
    """Resolve a study preset plus overrides into validated settings; `settings` are
    StudySettings fields (pos, seeds, lengths, task, ...)."""
    from ..evaluation import check_stride, default_stride
    from .registry import get_objective

    st = StudySettings(preset=preset_name, **{k: v for k, v in settings.items()
                                              if v is not None})
    sp = STUDY_PRESETS[st.preset]
    model, train = dict(model or {}), dict(train or {})
    if "pos" in model:
        raise ConfigError("the study sets the encoding per run; list encodings with --pos.")
    objective = get_objective(st.task)
    adopted: dict[int, Path] = {}
    if st.rope_checkpoints is not None:
        from .variants import adopt

        names = parse_encodings(st.pos or "rope")
        base, adopted = adopt(st, names, model, train)
        n = len(adopted)
    else:
        names = parse_encodings(st.pos)  # None: the default list
        base = merge(preset(sp["base"]), sp["model"], sp["train"],
                     where=f"study preset {st.preset}")
        base = merge(base, {}, objective.preset_overrides(sp), where=f"study preset {st.preset}")
        base = merge(base, {**model, "pos": names[0]}, train, where="command line")
        n = st.seeds or sp["seeds"]  # None: the preset's
    L = base.model.block_size
    lens = objective.lengths(st.lengths, L, sp["lengths"])
    stride = 1
    if objective.scores_text:
        stride = st.eval_stride or default_stride(lens, L)
        try:
            check_stride(stride, lens, L)
        except MiniGPTError as e:
            raise ConfigError(f"--eval-stride: {e}") from None
    from .variants import parse_variants

    ft = sp["finetune_steps"] if st.finetune_steps is None else st.finetune_steps
    seeds = list(adopted) or [base.train.seed + i for i in range(n)]
    study = Study(settings=st, encodings=names, seeds=seeds,
                  lengths=lens, eval_tokens=st.eval_tokens or sp["eval_tokens"],
                  eval_stride=stride, task_instances=st.task_instances or sp["task_instances"],
                  base=base, objective=objective,
                  variants=parse_variants(st.extend, st.extend_factors, ft, names),
                  adopted=adopted)
    for _, pos, seed in study.runs():  # validate every run's config now (e.g. rope head size)
        study.run_config(pos, seed)
    N, longest = base.model.random_positions, objective.longest_tokens(study)
    if N and longest > N:
        raise ConfigError(f"--random-positions {N} gives positions below {N}, but the longest "
                          f"evaluation needs {longest} tokens; raise --random-positions to at "
                          "least that or evaluate shorter --lengths.")
    return study
