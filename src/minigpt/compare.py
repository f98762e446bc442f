"""The positional-encoding study: one model per encoding (and seed), trained identically on
the same data, then evaluated and reported side by side.

    out/
      study.json            the settings, their fingerprint and the study's status
      runs/<pos>-s<seed>/   an ordinary checkpoint directory per run (sample or visualize it
                            later), plus result.json (its evaluation) and trained.json
      results.json          every run's record + study settings + environment (RESULTS_SCHEMA)
      report.md, report.html, *.png

A fair comparison holds everything but the encoding equal: the configuration and
hyper-parameters (the run configs differ only in `model.pos`, checked), the training batches
(a pure function of the seed), the initial values of every shared parameter (drawn per
parameter *name*, verified here), the evaluation tokens and the sampling prompt and seed.

Re-running with the same --out skips finished runs and resumes an interrupted one; changed
settings are refused unless --force, which then retrains only the runs whose training
configuration changed (and re-evaluates the rest if only evaluation settings changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import STUDY_PRESETS, RunConfig, merge, preset
from .errors import ConfigError, MiniGPTError
from .files import atomic_write_json, read_json
from .metrics import read_metrics
from .results_schema import GEN_METRICS, RESULTS_SCHEMA, SCHEMA, SCHEMA_VERSION, validate
from .runtime import autocast_dtype, is_main_process, resolve_device
from .tasks import LM, TaskDataset, evaluate_task, get_task, test_lengths
from .tasks import describe as describe_task
from .text import plural

EVAL_VERSION = 2  # bump when evaluation.py's numbers change meaning (forces re-evaluation)
DEFAULT_ENCODINGS = ["learned", "sinusoidal", "rope", "alibi", "nope"]
# Settings that may differ between invocations without making it another study.
NOT_FINGERPRINTED = {"device", "compile"}

# --- settings -------------------------------------------------------------------------------

def parse_list(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else str(text).split(",")
    return [s.strip() for s in items if s.strip()]


def parse_encodings(spec: str | list[str] | None) -> list[str]:
    from .positional import REGISTRY

    names = parse_list(spec) if spec is not None else list(DEFAULT_ENCODINGS)
    if not names:
        raise ConfigError("--pos needs at least one positional encoding.")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"--pos: unknown encoding(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(REGISTRY)}.")
    return list(dict.fromkeys(names))


def parse_lengths(spec: str | list[str], L: int) -> list[int]:
    """'1x,2x,4x,8x' (multiples of L) or '64,128,256' (tokens) -> sorted token lengths,
    always including L itself."""
    out = {L}
    for item in parse_list(spec):
        try:
            if item.lower().endswith("x"):
                mult = float(item[:-1])
                n = mult * L
                if not (mult > 0 and math.isfinite(n) and abs(n - round(n)) < 1e-9):
                    raise ValueError
                out.add(round(n))
            else:
                n = int(item)
                if n < 1:
                    raise ValueError
                out.add(n)
        except ValueError:
            raise ConfigError(
                f"--lengths: {item!r} is neither a multiple of L like 2x (giving a whole number "
                f"of tokens with L = {L}) nor a positive token count.") from None
    return sorted(out)


@dataclass
class Study:
    """Everything that defines a study; `fingerprint` identifies it in out/study.json."""

    preset: str
    encodings: list[str]
    seeds: list[int]
    lengths: list[int]  # tokens (lm) or instance lengths (tasks)
    eval_tokens: int  # lm: targets scored at every length
    eval_stride: int  # lm: window stride s <= L/2
    base: RunConfig  # the shared configuration (its pos and seed are overridden per run)
    task: str = LM
    task_instances: int = 200  # tasks: held-out instances per length

    @property
    def block_size(self) -> int:
        return self.base.model.block_size

    @property
    def is_task(self) -> bool:
        return self.task != LM

    def run_config(self, pos: str, seed: int) -> RunConfig:
        return merge(self.base, {"pos": pos}, {"seed": seed}, where=f"run {pos}-s{seed}")

    def runs(self) -> list[tuple[str, str, int]]:
        """(name, pos, seed) in training order: all encodings of a seed, then the next seed,
        so an interrupted study already holds complete comparisons for its first seeds. The
        encoding order rotates by one place per seed, so no encoding always runs last."""
        out = []
        for i, s in enumerate(self.seeds):
            k = i % len(self.encodings)
            out += [(run_name(p, s), p, s) for p in self.encodings[k:] + self.encodings[:k]]
        return out

    def settings(self) -> dict[str, Any]:
        cfg = self.base.to_dict()
        cfg["model"].pop("pos")
        cfg["train"].pop("seed")
        for k in NOT_FINGERPRINTED:
            cfg["train"].pop(k, None)
        return {"schema_version": SCHEMA_VERSION, "preset": self.preset, "task": self.task,
                "encodings": self.encodings, "seeds": self.seeds, "lengths": self.lengths,
                **self._eval_settings(), "config": cfg}

    def _eval_settings(self) -> dict[str, Any]:
        if self.is_task:
            return {"task_instances": self.task_instances}
        return {"eval_tokens": self.eval_tokens, "eval_stride": self.eval_stride}

    def fingerprint(self) -> str:
        return _hash(self.settings())

    def eval_fingerprint(self) -> str:
        t = self.base.train
        return _hash({"eval_version": EVAL_VERSION, "lengths": self.lengths,
                      **self._eval_settings(), "prompt": t.sample_prompt,
                      "temperatures": t.sample_temperatures, "tokens": t.sample_tokens})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_name(pos: str, seed: int) -> str:
    return f"{pos}-s{seed}"


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {value}.")
    return value


def make_study(preset_name: str = "quick", *, encodings: str | list[str] | None = None,
               seeds: int | None = None, lengths: str | list[str] | None = None,
               eval_tokens: int | None = None, eval_stride: int | None = None,
               task: str = LM, task_instances: int | None = None,
               model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
               ) -> Study:
    """Resolve a study preset plus overrides into validated settings."""
    from .evaluation import check_stride, default_stride

    if preset_name not in STUDY_PRESETS:
        raise ConfigError(f"unknown study preset {preset_name!r}; choose one of "
                          f"{', '.join(STUDY_PRESETS)}.")
    if task != LM:
        get_task(task)  # refuses unknown names
    sp = STUDY_PRESETS[preset_name]
    model, train = dict(model or {}), dict(train or {})
    if "pos" in model:
        raise ConfigError("the study sets the encoding per run; list encodings with --pos.")
    names = parse_encodings(encodings)
    base = merge(preset(sp["base"]), sp["model"], sp["train"], where=f"study preset {preset_name}")
    if task != LM:
        base = merge(base, {}, sp["task"], where=f"study preset {preset_name} ({task})")
    base = merge(base, {**model, "pos": names[0]}, train, where="command line")
    n = sp["seeds"] if seeds is None else seeds
    if not isinstance(n, int) or not 1 <= n <= 100:
        raise ConfigError(f"--seeds must be a whole number from 1 to 100, got {n}.")
    L = base.model.block_size
    spec = lengths if lengths is not None else sp["lengths"]
    if task != LM:
        spec = None if lengths is None else ",".join(parse_list(lengths))
        lens = test_lengths(get_task(task), L, spec)
        stride = 1
    else:
        lens = parse_lengths(spec, L)
        stride = default_stride(lens, L) if eval_stride is None else eval_stride
        try:
            check_stride(stride, lens, L)
        except MiniGPTError as e:
            raise ConfigError(f"--eval-stride: {e}") from None
    study = Study(preset=preset_name, encodings=names,
                  seeds=[base.train.seed + i for i in range(n)], lengths=lens,
                  eval_tokens=_positive("--eval-tokens", sp["eval_tokens"] if eval_tokens is None
                                        else eval_tokens),
                  eval_stride=stride, base=base, task=task,
                  task_instances=_positive("--task-instances", sp["task_instances"]
                                           if task_instances is None else task_instances))
    for _, pos, seed in study.runs():  # validate every run's config now (e.g. rope head size)
        study.run_config(pos, seed)
    return study


def diff_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_settings(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "settings"]


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Config fields (section.name) that differ, ignoring those that need not match."""
    da, db = a.to_dict(), b.to_dict()
    for settings in (da, db):
        for k in NOT_FINGERPRINTED:
            settings["train"].pop(k, None)
    return diff_settings(da, db)


# --- environment and memory -----------------------------------------------------------------

def environment(device: Any, train_cfg: Any = None) -> dict[str, Any]:
    import numpy
    import torch

    amp = autocast_dtype(train_cfg, device) if train_cfg is not None else None

    if getattr(device, "type", "cpu") == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "minigpt": __version__, "platform": platform.platform(),
            "device": str(device), "device_name": name or "unknown",
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "train_precision": f"{str(amp).removeprefix('torch.')} autocast" if amp
            else "float32"}


def _reset_peak(device: Any) -> bool:
    """Reset the peak-memory counter; True when the next reading covers only what follows."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 resets VmHWM (the peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_peak(device: Any, reset_ok: bool, fallback: float) -> tuple[float | None, str]:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    if reset_ok:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "rss_peak_during_run"
        except (OSError, ValueError, IndexError):
            pass
    return (fallback or None), "rss_peak_process"


# --- one run's record -----------------------------------------------------------------------

def training_record(rows: list[dict[str, Any]], max_steps: int) -> dict[str, Any]:
    """Curves and totals from metrics.jsonl rows. A resumed run restarts its `elapsed`
    clock, so wall time is made cumulative across the pieces."""
    offset, prev = 0.0, 0.0
    train = {"step": [], "loss": [], "wall_s": []}
    val = {"step": [], "loss": [], "wall_s": []}
    tps = []
    for r in rows:
        e = float(r.get("elapsed", prev))
        if e < prev - 1e-9:
            offset += prev
        prev = e
        wall = e + offset
        if "train_loss" in r:
            train["step"].append(int(r["step"]))
            train["loss"].append(float(r["train_loss"]))
            train["wall_s"].append(wall)
            if r.get("tokens_per_s"):
                tps.append(float(r["tokens_per_s"]))
        if "val_loss" in r:
            val["step"].append(int(r["step"]))
            val["loss"].append(float(r["val_loss"]))
            val["wall_s"].append(wall)
    finite = [v for v in val["loss"] if math.isfinite(v)]
    final = val["loss"][-1] if val["loss"] and val["step"][-1] == max_steps else None
    return {
        "steps": max(train["step"] + val["step"], default=0),
        "final_val_loss": final,
        "final_val_ppl": math.exp(min(final, 50.0)) if final is not None else None,
        "best_val_loss": min(finite) if finite else None,
        "train_time_s": (offset + prev),
        "tokens_per_s": statistics.median(tps) if tps else 0.0,
        "step_time_ms": steady_step_times(rows),
        "curves": {"train": train, "val": val},
    }


def steady_step_times(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Milliseconds per step over the log intervals of steady training: the interval from the
    start of every (re)started piece (start-up) and every interval that contains an evaluation
    are left out. Returns median, quartiles, n and the samples."""
    evaluated = {int(r["step"]) for r in rows if "val_loss" in r}
    samples, last = [], None  # last: (step, elapsed) of the previous training row
    for r in rows:
        if "train_loss" not in r or "elapsed" not in r:
            continue
        step, e = int(r["step"]), float(r["elapsed"])
        if last is not None and e > last[1] and step > last[0] and last[0] not in evaluated:
            samples.append(1000.0 * (e - last[1]) / (step - last[0]))
        last = (step, e)  # after a resume the clock restarts: no sample across it
    if not samples:
        return {"median": None, "q1": None, "q3": None, "n": 0, "samples": []}
    q1, med, q3 = (float(v) for v in np.percentile(samples, [25, 50, 75]))
    return {"median": med, "q1": q1, "q3": q3, "n": len(samples), "samples": samples}


# --- the study -----------------------------------------------------------------------------

@dataclass
class StudyOutcome:
    out: Path
    results: dict[str, Any] | None  # None when interrupted
    trained: list[str]
    skipped: list[str]
    interrupted: bool = False


def _fmt_s(s: float) -> str:
    s = round(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def check_out(study: Study, out: Path, force: bool, log: Callable[[str], None]) -> None:
    """Refuse an --out that holds another study (or something else) unless --force."""
    path = out / "study.json"
    if path.exists():
        old = read_json(path, "study file")
        if not isinstance(old, dict) or old.get("fingerprint") != study.fingerprint():
            changed = diff_settings(old.get("settings") if isinstance(old, dict) else None,
                                    study.settings())
            if not force:
                raise MiniGPTError(
                    f"{out} holds a study with other settings (changed: "
                    f"{', '.join(changed[:6]) or 'unknown'}); pass --force to retrain what "
                    "changed there, or choose another --out.")
            log(f"settings changed ({', '.join(changed[:6])}); --force: runs whose training "
                "config changed are retrained, the others re-evaluated as needed.")
    elif out.exists() and any(out.iterdir()) and not (out / "runs").is_dir() and not force:
        raise MiniGPTError(f"{out} exists, is not empty and holds no study (study.json); "
                           "choose another --out or pass --force to write into it.")


def _write_study_file(study: Study, out: Path, status: str) -> None:
    if not is_main_process():
        return
    atomic_write_json(out / "study.json", {
        "format": "minigpt-compare-study", "version": SCHEMA_VERSION,
        "minigpt_version": __version__, "status": status,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": study.fingerprint(), "settings": study.settings(),
        "runs": [name for name, _, _ in study.runs()]})


def verify_shared_init(study: Study, vocab_size: int) -> dict[str, Any]:
    """Build every encoding's model for every seed and check that the parameters they share
    start identical; also check that run configs differ only in pos (and seed)."""
    import torch

    from .model import GPT

    configs = {(p, s): study.run_config(p, s) for _, p, s in study.runs()}
    differ: set[str] = set()
    ref = next(iter(configs.values()))
    for cfg in configs.values():
        differ.update(config_diff(ref, cfg))
    unexpected = differ - {"model.pos", "train.seed"}
    if unexpected:  # a bug in run_config, never a user error
        raise RuntimeError(f"run configs differ in {sorted(unexpected)}")
    identical, shared_n = True, 0
    for seed in study.seeds:
        params = []
        for pos in study.encodings:
            cfg = dataclasses.replace(configs[(pos, seed)].model, vocab_size=vocab_size)
            params.append(dict(GPT(cfg, seed=seed).named_parameters()))
        shared = set.intersection(*(set(p) for p in params))
        shared_n = len(shared)
        for name in shared:
            identical &= all(torch.equal(params[0][name], p[name]) for p in params[1:])
    return {"configs_differ_only_in": sorted(differ), "shared_init_identical": identical,
            "shared_tensors": shared_n, "seeds_checked": list(study.seeds)}


def held_equal(study: Study, vocab: int, prompt: str, verification: dict[str, Any]
               ) -> list[str]:
    m, t = study.base.model, study.base.train
    differ = ", ".join(verification["configs_differ_only_in"]) or "nothing"
    if study.is_task:
        data_line = (f"Task: {describe_task(study.task, m.block_size)}; instances generated from "
                     "the seed, one per row, loss on the answer only; a character vocabulary of "
                     f"{vocab}.")
        eval_line = (f"Evaluation instances: the same {study.task_instances} held-out instances "
                     "per length for every model (their prompts are never drawn in training); "
                     "exact match of greedy decoding over the whole answer.")
    else:
        data_line = (f"Data and tokenizer: {t.data}, {t.tokenizer} tokenizer, vocabulary of "
                     f"{vocab}; the same train/validation split.")
        eval_line = (f"Evaluation tokens: the same {study.eval_tokens} validation targets at "
                     f"every length, scored with windows moved by a stride of {study.eval_stride} "
                     f"tokens that score their last {study.eval_stride} tokens, so at length T "
                     f"every scored token has T - {study.eval_stride} to T - 1 tokens of context.")
    lines = [
        (f"Configuration: the same model shapes for every run ({plural(m.n_layer, 'layer')}, "
        f"{plural(m.n_head, 'head')}, d_model {m.d_model}, d_ff {m.d_ff}, "
        f"trained context L = {m.block_size}); "
        f"the run configs differ only in {differ} (checked)."),
        data_line,
        (f"Hyper-parameters: AdamW (betas {t.beta1}, {t.beta2}, weight decay {t.weight_decay}), "
        f"lr {t.lr} -> {t.min_lr} with {t.warmup_steps} warm-up steps, clipping {t.grad_clip}, "
        f"batch {t.batch_size}x{t.grad_accum}, {t.max_steps} steps, dropout {m.dropout}."),
        ("Training batches: the same rows in the same order for a given seed (batches are a "
        "pure function of seed and step and never depend on the model); the dropout stream is "
        "seeded after the model is built, so it is the same for every encoding."),
        ("Initial values: every parameter the encodings share (token embedding, attention, MLP, "
        "LayerNorms) is drawn per parameter name from its own seeded generator; verified "
        f"identical across encodings for {verification['shared_tensors']} shared tensors and "
        f"seed(s) {', '.join(map(str, verification['seeds_checked']))}: "
        f"{'yes' if verification['shared_init_identical'] else 'NO'}."),
        eval_line,
    ]
    from .positional import REGISTRY

    notes = (REGISTRY[name].settings_note(m) for name in REGISTRY if name in study.encodings)
    lines += [note for note in notes if note]
    if not study.is_task and t.sample_tokens:
        lines.append(
            f"Sampling: prompt {prompt!r}, temperatures "
            f"{', '.join(f'{x:g}' for x in t.sample_temperatures)}, {t.sample_tokens} new "
            "tokens, the run's seed; every model sees at most its last L tokens while sampling.")
    lines.append("Machine: the same device and thread count, one run at a time; the run order "
                 "rotates by one encoding per seed.")
    return lines


def default_prompt(data: Any) -> str:
    """The first line of the training text (always encodable), at most 40 characters."""
    head = data.tokenizer.decode(data.train[:400].tolist())
    line = next((s for s in head.splitlines() if s.strip()), head)
    prompt = line[:40]
    if not line.endswith("\n") and len(line) <= 40 and "\n" in head:
        prompt += "\n"
    return prompt


class LMEvaluation:
    """Language modelling: strided perplexity by length on one validation span, and samples."""

    def __init__(self, study: Study, data: Any) -> None:
        from . import evaluation

        self.study = study
        self.span = evaluation.eval_span(np.asarray(data.val), study.lengths, study.eval_stride,
                                         study.eval_tokens)
        longest = max(study.lengths)
        self.targets = evaluation.scored_targets(self.span, study.eval_stride, longest)
        self.unigram = evaluation.unigram_ppl(data.train, self.targets,
                                              data.tokenizer.vocab_size)
        self.prompt = study.base.train.sample_prompt or default_prompt(data)
        data.tokenizer.check_text(self.prompt)
        self.words = evaluation.training_vocabulary(data.tokenizer, data.train) \
            if study.base.train.sample_tokens else set()

    def run(self, model: Any, tok: Any, cfg: RunConfig) -> dict[str, Any]:
        from . import evaluation

        lg = evaluation.length_generalization(model, self.span, self.study.lengths,
                                              self.study.eval_stride)
        gen = []
        t = cfg.train
        for temp in (t.sample_temperatures if t.sample_tokens else []):
            text = evaluation.sample_windowed(model, tok, self.prompt,
                                              max_new_tokens=t.sample_tokens,
                                              temperature=temp, seed=t.seed)
            gen.append({"temperature": temp, "text": text,
                        **evaluation.generation_metrics(text, self.words)})
        return {"length_generalization": lg, "generation": gen}

    def study_fields(self) -> dict[str, Any]:
        return {"eval_span_tokens": len(self.targets), "unigram_ppl": self.unigram,
                "prompt": self.prompt}


class TaskEvaluation:
    """An algorithmic task: exact-match accuracy of greedy answers by instance length."""

    def __init__(self, study: Study, data: TaskDataset) -> None:
        self.study, self.data = study, data
        self.prompt = ""

    def run(self, model: Any, tok: Any, cfg: RunConfig) -> dict[str, Any]:
        acc = evaluate_task(model, self.data, self.study.lengths, self.study.task_instances,
                            seed=self.study.seeds[0])
        return {"task_accuracy": acc, "generation": []}

    def study_fields(self) -> dict[str, Any]:
        return {"eval_span_tokens": 0, "unigram_ppl": None, "prompt": ""}


def study_data(study: Study, progress: bool) -> Any:
    if study.is_task:
        return TaskDataset.build(study.task, study.block_size)
    from .training import load_dataset

    return load_dataset(study.base, verbose=progress)


def run_study(study: Study, out: str | Path, *, force: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> StudyOutcome:
    """Train, evaluate and report every run of the study in `out` (resumable)."""
    from .report import summarize, write_report

    out = Path(out)
    data = study_data(study, progress)  # bad data: nothing created yet
    data.check_block(study.block_size)
    check_out(study, out, force, log)
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniGPTError(f"cannot create output directory {out}: {e.strerror}.") from None
    _write_study_file(study, out, "running")

    vocab = data.tokenizer.vocab_size
    device = resolve_device(study.base.train.device)
    verification = verify_shared_init(study, vocab)
    evaluator = TaskEvaluation(study, data) if study.is_task else LMEvaluation(study, data)
    runner = _Runner(study, out, data, device, evaluator, progress, log, force)
    try:
        for i, (name, pos, seed) in enumerate(study.runs(), 1):
            if not runner.run(i, name, pos, seed, vocab):
                _write_study_file(study, out, "interrupted")
                log(f"study interrupted during {name}; run the same command again to resume.")
                return StudyOutcome(out, None, runner.trained, runner.skipped,
                                    interrupted=True)
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one during evaluation
        _write_study_file(study, out, "interrupted")
        log("study interrupted; every finished step is saved: run the same command again "
            "to resume.")
        return StudyOutcome(out, None, runner.trained, runner.skipped, interrupted=True)

    if not is_main_process():
        return StudyOutcome(out, None, runner.trained, runner.skipped)
    results = collect_results(study, out, vocab, device, evaluator, verification)
    results["summary"] = summarize(results)
    errors = validate(results, RESULTS_SCHEMA)
    if errors:  # a bug, not a user error
        raise RuntimeError("results.json does not match its schema: " + "; ".join(errors[:5]))
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    _write_study_file(study, out, "complete")
    return StudyOutcome(out, results, runner.trained, runner.skipped)


@dataclass
class _Runner:
    """The study's runs one by one: train (or resume) each, evaluate it, and keep the
    names trained and skipped and the time per step for the ETA."""

    study: Study
    out: Path
    data: Any
    device: Any
    evaluator: Any
    progress: bool
    log: Callable[[str], None]
    force: bool
    trained: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    spent: float = 0.0  # wall seconds of this invocation's runs ...
    steps_done: int = 0  # ... and the steps they trained

    def run(self, i: int, name: str, pos: str, seed: int, vocab: int) -> bool:
        """Run `name` (the i-th); False if its training was interrupted."""
        from . import checkpoint

        cfg = merge(self.study.run_config(pos, seed), {"vocab_size": vocab}, {},
                    where=f"run {name}")
        run_dir = self.out / "runs" / name
        tag = f"[{i}/{len(self.study.runs())}] {name}"
        eval_fp = self.study.eval_fingerprint()
        state, start_step = _run_state(run_dir, cfg, eval_fp, self.force)
        if state == "done":
            self.log(f"{tag}: finished earlier, skipped")
            self.skipped.append(name)
            return True
        t0 = time.perf_counter()
        if state == "trained":
            self.log(f"{tag}: trained earlier; evaluating")
        else:
            self.log(f"{tag}: {self._what(state, start_step)} ({pos}, seed {seed}, "
                     f"{cfg.train.max_steps} steps) · {self._eta(i, cfg, start_step)}")
            if not _train_run(cfg, run_dir, state == "partial", self.data, self.device,
                              self.progress, self.log):
                return False
            self.trained.append(name)
            self.steps_done += cfg.train.max_steps - start_step
        if not is_main_process():
            return True  # under DDP only rank 0 evaluates and writes
        model, tok, _, _ = checkpoint.load(run_dir, device=self.device)
        record = evaluate_run(model, cfg, run_dir, name, self.evaluator.run(model, tok, cfg))
        record["eval_fingerprint"] = eval_fp
        atomic_write_json(run_dir / "result.json", record)
        self.spent += time.perf_counter() - t0
        return True

    @staticmethod
    def _what(state: str, start_step: int) -> str:
        return f"resuming from step {start_step}" if state == "partial" else "training"

    def _eta(self, i: int, cfg: RunConfig, start_step: int) -> str:
        left = cfg.train.max_steps * (len(self.study.runs()) - i + 1) - start_step
        return (f"study ETA {_fmt_s(left * self.spent / self.steps_done)}" if self.steps_done
                else "study ETA after the first run")


def _train_run(cfg: RunConfig, run_dir: Path, resume: bool, data: Any, device: Any,
               progress: bool, log: Callable[[str], None]) -> bool:
    """Train (or resume) one run to the end; False when it was interrupted (Ctrl-C)."""
    from .training import train

    reset_ok = _reset_peak(device)
    res = train(cfg, run_dir, resume=resume, progress=progress, data=data, log=log)
    if res.interrupted:
        return False
    if not is_main_process():
        return True
    peak, kind = _read_peak(device, reset_ok, res.peak_mem_mb)
    atomic_write_json(run_dir / "trained.json", {"peak_mem_mb": peak, "peak_mem_kind": kind,
                                                 "device": str(device)})
    return True


def _run_state(run_dir: Path, cfg: RunConfig, eval_fp: str, force: bool) -> tuple[str, int]:
    """fresh | partial (resume from step) | trained (evaluate) | done (skip)."""
    from .checkpoint import STATE_FILE, read_config

    if not (run_dir / "config.json").exists():
        if (run_dir / STATE_FILE).exists():
            shutil.rmtree(run_dir)  # a half-written directory of ours: start over
        return "fresh", 0
    saved, raw = read_config(run_dir)
    diff = config_diff(saved, cfg)
    if diff:
        if not force:
            raise MiniGPTError(f"{run_dir} holds a run with other settings ({', '.join(diff[:4])})"
                               "; pass --force to retrain it, or choose another --out.")
        shutil.rmtree(run_dir)
        return "fresh", 0
    if not (run_dir / STATE_FILE).exists():  # stopped before its first checkpoint
        shutil.rmtree(run_dir)
        return "fresh", 0
    step = int(raw.get("step", 0))
    if step < cfg.train.max_steps:
        return "partial", step
    try:
        done = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        if isinstance(done, dict) and done.get("eval_fingerprint") == eval_fp:
            return "done", step
    except (OSError, json.JSONDecodeError):
        pass
    return "trained", step


def evaluate_run(model: Any, cfg: RunConfig, run_dir: Path, name: str,
                 evaluation: dict[str, Any]) -> dict[str, Any]:
    """One run's record: its training curves and costs plus what the evaluator measured."""
    rec = training_record(read_metrics(run_dir / "metrics.jsonl"), cfg.train.max_steps)
    try:
        mem = json.loads((run_dir / "trained.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        mem = {}
    rec.update(params=model.num_params(), pos_params=model.pos.num_params(),
               peak_mem_mb=mem.get("peak_mem_mb"), peak_mem_kind=mem.get("peak_mem_kind",
                                                                          "unknown"))
    return {"name": name, "pos": cfg.model.pos, "seed": cfg.train.seed, "dir": f"runs/{name}",
            "extrapolates": bool(model.pos.extrapolates), "config": cfg.to_dict(),
            "training": rec, **evaluation}


def _col_stats(rs: list[dict[str, Any]], key: str, fields: tuple[str, ...]
               ) -> list[dict[str, Any]]:
    """Per row of rs[*][key]["results"]: mean/std over seeds of each field."""
    from .evaluation import mean_std

    rows = []
    for j, row in enumerate(rs[0][key]["results"]):
        col = [r[key]["results"][j] for r in rs]
        out = {k: row[k] for k in ("length", "multiple", "tokens") if k in row}
        out.update({f: mean_std(c[f] for c in col) for f in fields})
        out["reason"] = next((c["reason"] for c in col if c["reason"]), None)
        out["untrained"] = next((c["untrained"] for c in col if c["untrained"]), None)
        rows.append(out)
    return rows


def aggregate(runs: list[dict[str, Any]], encodings: list[str]) -> list[dict[str, Any]]:
    """Per encoding: mean and sample std over seeds of every number in the run records."""
    from .evaluation import mean_std

    out = []
    for pos in encodings:
        rs = [r for r in runs if r["pos"] == pos]
        if not rs:
            continue
        tr = [r["training"] for r in rs]
        agg: dict[str, Any] = {"pos": pos, "seeds": len(rs), "extrapolates": rs[0]["extrapolates"]}
        for k in ("final_val_loss", "final_val_ppl", "train_time_s", "tokens_per_s", "params",
                  "pos_params", "peak_mem_mb"):
            agg[k] = mean_std(t[k] for t in tr)
        agg["step_time_ms"] = mean_std(t["step_time_ms"]["median"] for t in tr)
        if "length_generalization" in rs[0]:
            agg["length_ppl"] = [{k: v for k, v in row.items() if k != "tokens"}
                                 for row in _col_stats(rs, "length_generalization",
                                                       ("ppl", "loss"))]
            curves = [r["length_generalization"]["position_loss"]["loss"] for r in rs]
            n = min(len(c) for c in curves)
            stats = [mean_std(c[p] for c in curves) for p in range(n)]
            agg["position_loss"] = {
                "length": rs[0]["length_generalization"]["position_loss"]["length"],
                "mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}
        if "task_accuracy" in rs[0]:
            agg["accuracy"] = [{k: v for k, v in row.items() if k != "multiple"}
                               for row in _col_stats(rs, "task_accuracy", ("accuracy",))]
        gen = []
        for j, g in enumerate(rs[0]["generation"]):
            col = [r["generation"][j] for r in rs if len(r["generation"]) > j]
            gen.append({"temperature": g["temperature"],
                        **{k: mean_std(c[k] for c in col) for k in GEN_METRICS}})
        agg["generation"] = gen
        out.append(agg)
    return out


def collect_results(study: Study, out: Path, vocab: int, device: Any, evaluator: Any,
                    verification: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for name, _, _ in study.runs():
        rec = json.loads((out / "runs" / name / "result.json").read_text(encoding="utf-8"))
        rec.pop("eval_fingerprint", None)
        runs.append(rec)
    order = [name for name, _, _ in study.runs()]
    runs.sort(key=lambda r: (study.seeds.index(r["seed"]), study.encodings.index(r["pos"])))
    t = study.base.train
    base = study.base.to_dict()
    base["model"]["vocab_size"] = vocab
    fields = evaluator.study_fields()
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": {
            "preset": study.preset, "task": study.task, "encodings": study.encodings,
            "seeds": study.seeds, "run_order": order, "block_size": study.block_size,
            "lengths": study.lengths, "eval_tokens": study.eval_tokens,
            "eval_stride": study.eval_stride, "task_instances": study.task_instances,
            **fields, "temperatures": list(t.sample_temperatures),
            "sample_tokens": t.sample_tokens, "fingerprint": study.fingerprint(),
            "base_config": base,
            "held_equal": held_equal(study, vocab, fields["prompt"], verification),
            "verification": verification,
        },
        "environment": environment(device, study.base.train),
        "runs": runs,
        "aggregates": aggregate(runs, study.encodings),
    }
