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

from . import __version__
from .config import RunConfig, merge, preset
from .errors import ConfigError, MiniGPTError
from .io import atomic_write_json, read_json

SCHEMA = "minigpt-compare-results"
SCHEMA_VERSION = 1
EVAL_VERSION = 1  # bump when evaluation.py's numbers change meaning (forces re-evaluation)
DEFAULT_ENCODINGS = ["learned", "sinusoidal", "rope", "alibi", "nope"]
# Settings that may differ between invocations without making it another study.
NOT_FINGERPRINTED = {"device", "compile"}

# Study presets: a base model preset plus overrides, and the study's own settings.
# `quick` is what `make demo` runs: chosen by measurement to finish in a few minutes on a
# 2-core CPU while still separating the encodings; `full` is the rigorous version.
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "base": "small",
        "model": {"block_size": 64, "n_layer": 4, "n_head": 4, "d_model": 128, "dropout": 0.0},
        "train": {"tokenizer": "char", "batch_size": 16, "max_steps": 800, "lr": 2e-3,
                  "min_lr": 2e-4, "warmup_steps": 60, "eval_interval": 100, "eval_iters": 8,
                  "log_interval": 10, "sample_tokens": 300},
        "seeds": 1,
        "lengths": "1x,2x,4x,8x",
        "eval_windows": 32,  # windows of the longest length: 32 x 512 = 16384 tokens scored
    },
    "full": {
        "base": "small",
        "model": {"block_size": 128, "n_layer": 6, "n_head": 8, "d_model": 256, "dropout": 0.1},
        "train": {"tokenizer": "char", "batch_size": 32, "max_steps": 4000, "lr": 1e-3,
                  "min_lr": 1e-4, "warmup_steps": 200, "eval_interval": 250, "eval_iters": 40,
                  "log_interval": 20, "sample_tokens": 500},
        "seeds": 3,
        "lengths": "1x,2x,4x,8x",
        "eval_windows": 64,  # 64 x 1024 = 65536 tokens scored at every length
    },
}


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
    lengths: list[int]
    eval_windows: int
    base: RunConfig  # the shared configuration (its pos and seed are overridden per run)

    @property
    def block_size(self) -> int:
        return self.base.model.block_size

    def run_config(self, pos: str, seed: int) -> RunConfig:
        return merge(self.base, {"pos": pos}, {"seed": seed}, where=f"run {pos}-s{seed}")

    def runs(self) -> list[tuple[str, str, int]]:
        """(name, pos, seed) in training order: all encodings of a seed, then the next seed,
        so an interrupted study already holds complete comparisons for its first seeds."""
        return [(run_name(p, s), p, s) for s in self.seeds for p in self.encodings]

    def settings(self) -> dict[str, Any]:
        cfg = self.base.to_dict()
        cfg["model"].pop("pos")
        cfg["train"].pop("seed")
        for k in NOT_FINGERPRINTED:
            cfg["train"].pop(k, None)
        return {"schema_version": SCHEMA_VERSION, "preset": self.preset,
                "encodings": self.encodings, "seeds": self.seeds, "lengths": self.lengths,
                "eval_windows": self.eval_windows, "config": cfg}

    def fingerprint(self) -> str:
        return _hash(self.settings())

    def eval_fingerprint(self) -> str:
        t = self.base.train
        return _hash({"eval_version": EVAL_VERSION, "lengths": self.lengths,
                      "eval_windows": self.eval_windows, "prompt": t.sample_prompt,
                      "temperatures": t.sample_temperatures, "tokens": t.sample_tokens})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_name(pos: str, seed: int) -> str:
    return f"{pos}-s{seed}"


def make_study(preset_name: str = "quick", *, encodings: str | list[str] | None = None,
               seeds: int | None = None, lengths: str | list[str] | None = None,
               eval_windows: int | None = None, model: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None) -> Study:
    """Resolve a study preset plus overrides into validated settings."""
    if preset_name not in STUDY_PRESETS:
        raise ConfigError(f"unknown study preset {preset_name!r}; choose one of "
                          f"{', '.join(STUDY_PRESETS)}.")
    sp = STUDY_PRESETS[preset_name]
    model, train = dict(model or {}), dict(train or {})
    if "pos" in model:
        raise ConfigError("the study sets the encoding per run; list encodings with --pos.")
    names = parse_encodings(encodings)
    base = merge(preset(sp["base"]), sp["model"], sp["train"], where=f"study preset {preset_name}")
    base = merge(base, {**model, "pos": names[0]}, train, where="command line")
    n = sp["seeds"] if seeds is None else seeds
    if not isinstance(n, int) or not 1 <= n <= 100:
        raise ConfigError(f"--seeds must be a whole number from 1 to 100, got {n}.")
    windows = sp["eval_windows"] if eval_windows is None else eval_windows
    if not isinstance(windows, int) or windows < 1:
        raise ConfigError(f"--eval-windows must be a positive whole number, got {windows}.")
    study = Study(preset=preset_name, encodings=names,
                  seeds=[base.train.seed + i for i in range(n)],
                  lengths=parse_lengths(lengths if lengths is not None else sp["lengths"],
                                        base.model.block_size),
                  eval_windows=windows, base=base)
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
    for d in (da, db):
        for k in NOT_FINGERPRINTED:
            d["train"].pop(k, None)
    return diff_settings(da, db)


# --- the JSON schema of results.json --------------------------------------------------------

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_NUMS = {"type": "array", "items": _NUM}
_STATS = {"type": "object", "required": ["mean", "std", "n"],
          "properties": {"mean": _NUM_OR_NULL, "std": _NUM_OR_NULL, "n": _INT}}
_CURVE = {"type": "object", "required": ["step", "loss", "wall_s"],
          "properties": {"step": {"type": "array", "items": _INT}, "loss": _NUMS,
                         "wall_s": _NUMS}}
_GEN_METRICS = {"words": _INT, "distinct_1": _NUM_OR_NULL, "distinct_2": _NUM_OR_NULL,
                "repeated_4gram_share": _NUM_OR_NULL, "known_word_share": _NUM_OR_NULL}

RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "pos", "seed", "dir", "extrapolates", "config", "training",
                 "length_generalization", "generation"],
    "properties": {
        "name": _STR, "pos": _STR, "seed": _INT,
        "dir": {"type": "string", "description": "checkpoint directory, relative to out"},
        "extrapolates": _BOOL,
        "config": {"type": "object", "required": ["model", "train"]},
        "training": {
            "type": "object",
            "required": ["steps", "final_val_loss", "final_val_ppl", "best_val_loss",
                         "train_time_s", "tokens_per_s", "params", "pos_params",
                         "peak_mem_mb", "peak_mem_kind", "curves"],
            "properties": {
                "steps": _INT, "final_val_loss": _NUM_OR_NULL, "final_val_ppl": _NUM_OR_NULL,
                "best_val_loss": _NUM_OR_NULL,
                "train_time_s": {"type": "number", "description": "wall seconds, resumes summed"},
                "tokens_per_s": {"type": "number", "description": "median over log intervals"},
                "params": _INT, "pos_params": _INT, "peak_mem_mb": _NUM_OR_NULL,
                "peak_mem_kind": {"enum": ["cuda_max_allocated", "rss_peak_during_run",
                                           "rss_peak_process", "unknown"]},
                "curves": {"type": "object", "required": ["train", "val"],
                           "properties": {"train": _CURVE, "val": _CURVE}},
            },
        },
        "length_generalization": {
            "type": "object", "required": ["span_tokens", "results", "position_loss"],
            "properties": {
                "span_tokens": _INT,
                "results": {"type": "array", "items": {
                    "type": "object",
                    "required": ["length", "multiple", "tokens", "loss", "ppl", "reason"],
                    "properties": {"length": _INT, "multiple": _NUM, "tokens": _INT,
                                   "loss": _NUM_OR_NULL, "ppl": _NUM_OR_NULL,
                                   "reason": {"type": ["string", "null"]}}}},
                "position_loss": {"type": "object", "required": ["length", "loss"],
                                  "properties": {"length": _INT, "loss": _NUMS}},
            },
        },
        "generation": {"type": "array", "items": {
            "type": "object", "required": ["temperature", "text", *_GEN_METRICS],
            "properties": {"temperature": _NUM, "text": _STR, **_GEN_METRICS}}},
    },
}

AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pos", "seeds", "extrapolates", "final_val_loss", "final_val_ppl",
                 "train_time_s", "tokens_per_s", "params", "pos_params", "peak_mem_mb",
                 "length_ppl", "position_loss", "generation"],
    "properties": {
        "pos": _STR, "seeds": _INT, "extrapolates": _BOOL,
        **{k: _STATS for k in ("final_val_loss", "final_val_ppl", "train_time_s",
                               "tokens_per_s", "params", "pos_params", "peak_mem_mb")},
        "length_ppl": {"type": "array", "items": {
            "type": "object", "required": ["length", "multiple", "ppl", "loss", "reason"],
            "properties": {"length": _INT, "multiple": _NUM, "ppl": _STATS, "loss": _STATS,
                           "reason": {"type": ["string", "null"]}}}},
        "position_loss": {"type": "object", "required": ["length", "mean", "std"],
                          "properties": {"length": _INT, "mean": _NUMS, "std": _NUMS}},
        "generation": {"type": "array", "items": {
            "type": "object", "required": ["temperature"],
            "properties": {"temperature": _NUM, **{k: _STATS for k in _GEN_METRICS}}}},
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/minigpt/minigpt/schemas/compare-results-v1.json",
    "title": "minigpt compare results",
    "description": "One record per run (encoding x seed), per-encoding aggregates (mean, "
                   "sample std over seeds), the study settings and the environment. Losses are "
                   "natural-log cross-entropy per token; ppl = exp(loss).",
    "type": "object",
    "required": ["schema", "schema_version", "created", "study", "environment", "runs",
                 "aggregates", "summary"],
    "properties": {
        "schema": {"const": SCHEMA},
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string", "description": "ISO 8601 time, UTC"},
        "study": {
            "type": "object",
            "required": ["preset", "encodings", "seeds", "block_size", "lengths",
                         "eval_windows", "eval_span_tokens", "prompt", "temperatures",
                         "sample_tokens", "fingerprint", "base_config", "held_equal",
                         "verification", "unigram_ppl"],
            "properties": {
                "preset": _STR, "encodings": {"type": "array", "items": _STR},
                "seeds": {"type": "array", "items": _INT}, "block_size": _INT,
                "lengths": {"type": "array", "items": _INT}, "eval_windows": _INT,
                "eval_span_tokens": _INT, "prompt": _STR, "temperatures": _NUMS,
                "sample_tokens": _INT, "fingerprint": _STR,
                "unigram_ppl": {"type": "number", "description": "perplexity of a context-free "
                                "unigram model (training frequencies) on the evaluation span"},
                "base_config": {"type": "object", "required": ["model", "train"]},
                "held_equal": {"type": "array", "items": _STR},
                "verification": {
                    "type": "object",
                    "required": ["configs_differ_only_in", "shared_init_identical",
                                 "shared_tensors", "seeds_checked"],
                    "properties": {"configs_differ_only_in": {"type": "array", "items": _STR},
                                   "shared_init_identical": _BOOL, "shared_tensors": _INT,
                                   "seeds_checked": {"type": "array", "items": _INT}}},
            },
        },
        "environment": {
            "type": "object",
            "required": ["python", "torch", "numpy", "minigpt", "platform", "device",
                         "device_name", "torch_threads", "cpu_count", "train_precision"],
            "properties": {"python": _STR, "torch": _STR, "numpy": _STR, "minigpt": _STR,
                           "platform": _STR, "device": _STR, "device_name": _STR,
                           "torch_threads": _INT, "cpu_count": {"type": ["integer", "null"]},
                           "train_precision": {"type": "string", "description": "float32 or "
                                               "the autocast dtype training used"}},
        },
        "runs": {"type": "array", "items": RUN_SCHEMA},
        "aggregates": {"type": "array", "items": AGGREGATE_SCHEMA},
        "summary": {"type": "object", "required": ["text", "findings"],
                    "properties": {"text": _STR, "findings": {"type": "object"}}},
    },
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and math.isfinite(v),
}


def validate(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Check `instance` against the subset of JSON Schema used here (type, const, enum,
    required, properties, items); return one message per violation (empty when valid)."""
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {instance!r}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                errors += validate(instance[key], sub, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


# --- environment and memory -----------------------------------------------------------------

def environment(device: Any, train_cfg: Any = None) -> dict[str, Any]:
    import numpy
    import torch

    from .training import autocast_dtype

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

def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


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
        "curves": {"train": train, "val": val},
    }


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


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job: they train alongside rank 0 but write nothing."""
    return int(os.environ.get("RANK", "0")) == 0


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


def held_equal(study: Study, data: Any, span_tokens: int, prompt: str,
               verification: dict[str, Any]) -> list[str]:
    m, t = study.base.model, study.base.train
    differ = ", ".join(verification["configs_differ_only_in"]) or "nothing"
    return [
        (f"Configuration: the same model shapes for every run ({_n(m.n_layer, 'layer')}, "
        f"{_n(m.n_head, 'head')}, d_model {m.d_model}, d_ff {m.d_ff}, "
        f"trained context L = {m.block_size}); "
        f"the run configs differ only in {differ} (checked)."),
        (f"Data and tokenizer: {t.data}, {t.tokenizer} tokenizer, vocabulary of "
        f"{data.tokenizer.vocab_size}; the same train/validation split."),
        (f"Hyper-parameters: AdamW (betas {t.beta1}, {t.beta2}, weight decay {t.weight_decay}), "
        f"lr {t.lr} -> {t.min_lr} with {t.warmup_steps} warm-up steps, clipping {t.grad_clip}, "
        f"batch {t.batch_size}x{t.grad_accum}, {t.max_steps} steps, dropout {m.dropout}."),
        ("Training batches: the same windows in the same order for a given seed (batches are a "
        "pure function of seed and step and never depend on the model)."),
        ("Initial values: every parameter the encodings share (token embedding, attention, MLP, "
        "LayerNorms) is drawn per parameter name from its own seeded generator; verified "
        f"identical across encodings for {verification['shared_tensors']} shared tensors and "
        f"seed(s) {', '.join(map(str, verification['seeds_checked']))}: "
        f"{'yes' if verification['shared_init_identical'] else 'NO'}."),
        (f"Evaluation tokens: one fixed validation span of {span_tokens} tokens, scored once at "
        "every length by every model."),
        (f"Sampling: prompt {prompt!r}, temperatures "
        f"{', '.join(f'{x:g}' for x in t.sample_temperatures)}, {t.sample_tokens} new tokens, "
        "the run's seed; every model sees at most its last L tokens while sampling."),
        "Machine: the same device and thread count, one run at a time.",
    ]


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def default_prompt(data: Any) -> str:
    """The first line of the training text (always encodable), at most 40 characters."""
    head = data.tokenizer.decode(data.train[:400].tolist())
    line = next((s for s in head.splitlines() if s.strip()), head)
    prompt = line[:40]
    if not line.endswith("\n") and len(line) <= 40 and "\n" in head:
        prompt += "\n"
    return prompt


def run_study(study: Study, out: str | Path, *, force: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> StudyOutcome:
    """Train, evaluate and report every run of the study in `out` (resumable)."""
    import numpy as np

    from . import checkpoint, evaluation
    from .report import summarize, write_report
    from .training import load_dataset, resolve_device

    out = Path(out)
    data = load_dataset(study.base, verbose=progress)  # bad data: nothing created yet
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
    span = evaluation.eval_span(np.asarray(data.val), study.lengths, study.eval_windows)
    unigram = evaluation.unigram_ppl(data.train, span, vocab)
    prompt = study.base.train.sample_prompt or default_prompt(data)
    data.tokenizer.check_text(prompt)
    words = evaluation.training_vocabulary(data.tokenizer, data.train) \
        if study.base.train.sample_tokens else set()
    eval_fp = study.eval_fingerprint()

    runs = study.runs()
    trained, skipped = [], []
    spent, steps_done = 0.0, 0  # for the ETA: wall seconds per trained step, this invocation
    try:
        for i, (name, pos, seed) in enumerate(runs, 1):
            cfg = study.run_config(pos, seed)
            cfg.model.vocab_size = vocab
            cfg.model.__post_init__()
            run_dir = out / "runs" / name
            tag = f"[{i}/{len(runs)}] {name}"
            state, start_step = _run_state(run_dir, cfg, eval_fp, force)
            if state == "done":
                log(f"{tag}: finished earlier, skipped")
                skipped.append(name)
                continue
            t0 = time.perf_counter()
            if state == "trained":
                log(f"{tag}: trained earlier; evaluating")
            else:
                left = cfg.train.max_steps * (len(runs) - i + 1) - start_step
                eta = (f"study ETA {_fmt_s(left * spent / steps_done)}" if steps_done
                       else "study ETA after the first run")
                what = f"resuming from step {start_step}" if state == "partial" else "training"
                log(f"{tag}: {what} ({pos}, seed {seed}, {cfg.train.max_steps} steps) · {eta}")
                if not _train_run(cfg, run_dir, state == "partial", data, device, progress, log):
                    _write_study_file(study, out, "interrupted")
                    log(f"study interrupted during {name}; run the same command again to "
                        "resume.")
                    return StudyOutcome(out, None, trained, skipped, interrupted=True)
                trained.append(name)
                steps_done += cfg.train.max_steps - start_step
            if not is_main_process():
                continue  # under DDP only rank 0 evaluates and writes
            model, tok, _, _ = checkpoint.load(run_dir, device=device)
            record = evaluate_run(model, tok, cfg, run_dir, name, span, study.lengths, prompt,
                                  words)
            record["eval_fingerprint"] = eval_fp
            atomic_write_json(run_dir / "result.json", record)
            spent += time.perf_counter() - t0
            del model
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one during evaluation
        _write_study_file(study, out, "interrupted")
        log("study interrupted; every finished step is saved: run the same command again "
            "to resume.")
        return StudyOutcome(out, None, trained, skipped, interrupted=True)

    if not is_main_process():
        return StudyOutcome(out, None, trained, skipped)
    results = collect_results(study, out, data, device, span, prompt, verification, unigram)
    results["summary"] = summarize(results)
    errors = validate(results, RESULTS_SCHEMA)
    if errors:  # a bug, not a user error
        raise RuntimeError("results.json does not match its schema: " + "; ".join(errors[:5]))
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    _write_study_file(study, out, "complete")
    return StudyOutcome(out, results, trained, skipped)


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


def evaluate_run(model: Any, tok: Any, cfg: RunConfig, run_dir: Path, name: str, span: Any,
                 lengths: list[int], prompt: str, words: set[str]) -> dict[str, Any]:
    from . import evaluation

    rec = training_record(read_metrics(run_dir / "metrics.jsonl"), cfg.train.max_steps)
    try:
        mem = json.loads((run_dir / "trained.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        mem = {}
    rec.update(params=model.num_params(), pos_params=model.pos.num_params(),
               peak_mem_mb=mem.get("peak_mem_mb"), peak_mem_kind=mem.get("peak_mem_kind",
                                                                          "unknown"))
    lg = evaluation.length_generalization(model, span, lengths)
    gen = []
    t = cfg.train
    if t.sample_tokens:
        from .inference import sampling_model

        sampler, _ = sampling_model(model, "auto")  # the weights `minigpt sample` uses
        for temp in t.sample_temperatures:
            text = evaluation.sample_windowed(sampler, tok, prompt, max_new_tokens=t.sample_tokens,
                                              temperature=temp, seed=t.seed)
            gen.append({"temperature": temp, "text": text,
                        **evaluation.generation_metrics(text, words)})
    return {"name": name, "pos": cfg.model.pos, "seed": t.seed, "dir": f"runs/{name}",
            "extrapolates": bool(model.pos.extrapolates), "config": cfg.to_dict(),
            "training": rec, "length_generalization": lg, "generation": gen}


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
        lengths = []
        for j, row in enumerate(rs[0]["length_generalization"]["results"]):
            col = [r["length_generalization"]["results"][j] for r in rs]
            lengths.append({"length": row["length"], "multiple": row["multiple"],
                            "ppl": mean_std(c["ppl"] for c in col),
                            "loss": mean_std(c["loss"] for c in col),
                            "reason": next((c["reason"] for c in col if c["reason"]), None)})
        agg["length_ppl"] = lengths
        curves = [r["length_generalization"]["position_loss"]["loss"] for r in rs]
        n = min(len(c) for c in curves)
        stats = [mean_std(c[p] for c in curves) for p in range(n)]
        agg["position_loss"] = {"length": rs[0]["length_generalization"]["position_loss"]["length"],
                                "mean": [s["mean"] for s in stats],
                                "std": [s["std"] for s in stats]}
        gen = []
        for j, g in enumerate(rs[0]["generation"]):
            col = [r["generation"][j] for r in rs if len(r["generation"]) > j]
            gen.append({"temperature": g["temperature"],
                        **{k: mean_std(c[k] for c in col) for k in _GEN_METRICS}})
        agg["generation"] = gen
        out.append(agg)
    return out


def collect_results(study: Study, out: Path, data: Any, device: Any, span: Any, prompt: str,
                    verification: dict[str, Any], unigram: float) -> dict[str, Any]:
    runs = []
    for name, _, _ in study.runs():
        rec = json.loads((out / "runs" / name / "result.json").read_text(encoding="utf-8"))
        rec.pop("eval_fingerprint", None)
        runs.append(rec)
    t = study.base.train
    span_tokens = len(span) - 1
    base = study.base.to_dict()
    base["model"]["vocab_size"] = data.tokenizer.vocab_size
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": {
            "preset": study.preset, "encodings": study.encodings, "seeds": study.seeds,
            "block_size": study.block_size, "lengths": study.lengths,
            "eval_windows": study.eval_windows, "eval_span_tokens": span_tokens,
            "unigram_ppl": unigram,
            "prompt": prompt, "temperatures": list(t.sample_temperatures),
            "sample_tokens": t.sample_tokens, "fingerprint": study.fingerprint(),
            "base_config": base,
            "held_equal": held_equal(study, data, span_tokens, prompt, verification),
            "verification": verification,
        },
        "environment": environment(device, study.base.train),
        "runs": runs,
        "aggregates": aggregate(runs, study.encodings),
    }
