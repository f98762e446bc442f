"""The JSON Schema of a study's results.json, and a validator for the subset of JSON Schema it
uses (type, const, enum, required, properties, items), so the results are checked with no
extra dependency. Why not the `jsonschema` package: it would add five runtime packages (one
compiled) for these 25 lines, and its "number" admits NaN and infinity, which results.json
must not hold. tests/test_study.py checks that this validator gives jsonschema's Draft
2020-12 verdict on a real results.json and hundreds of corrupted copies.

This module holds the parts every study shares; each objective adds its own fragment
(minigpt.study.objective), and minigpt.study.schema assembles the whole RESULTS_SCHEMA.

Version 2: strided length evaluation with per-window losses, algorithmic tasks (exact-match
accuracy by instance length), steady-state step times, and flags for parameters evaluated
without ever having received a gradient. Version 3: objectives as plug-ins with their own
fragments; the window baseline; evaluation blocks spread over the validation text; task
dependencies, baselines and convergence checks; the learned positional state of each run;
every comparison of the summary with its raw and Holm-adjusted p-value; jobs and CPU flags.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

SCHEMA = "minigpt-compare-results"
SCHEMA_VERSION = 3

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_NUMS = {"type": "array", "items": _NUM}
_STATS = {"type": "object", "required": ["mean", "std", "n"],
          "properties": {"mean": _NUM_OR_NULL, "std": _NUM_OR_NULL, "n": _INT}}
_CURVE = {"type": "object", "required": ["step", "loss", "wall_s"],
          "properties": {"step": {"type": "array", "items": _INT}, "loss": _NUMS,
                         "wall_s": _NUMS}}
GEN_METRICS = ("words", "distinct_1", "distinct_2", "repeated_4gram_share", "known_word_share")
_GEN_METRICS = {"words": _INT, **{k: _NUM_OR_NULL for k in GEN_METRICS[1:]}}
_STEP_TIME = {
    "type": "object", "required": ["median", "q1", "q3", "n"],
    "description": "milliseconds per optimizer step over steady-state log intervals (the "
                   "first interval and intervals that include an evaluation left out)",
    "properties": {"median": _NUM_OR_NULL, "q1": _NUM_OR_NULL, "q3": _NUM_OR_NULL, "n": _INT,
                   "samples": _NUMS}}

RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "pos", "seed", "dir", "extrapolates", "config", "training",
                 "generation"],
    "properties": {
        "name": _STR, "pos": _STR, "seed": _INT,
        "dir": {"type": "string", "description": "checkpoint directory, relative to out"},
        "extrapolates": _BOOL,
        "config": {"type": "object", "required": ["model", "train"]},
        "training": {
            "type": "object",
            "required": ["steps", "final_val_loss", "best_val_loss",
                         "train_time_s", "tokens_per_s", "step_time_ms", "params",
                         "pos_params", "peak_mem_mb", "peak_mem_kind", "curves", "checks",
                         "stopped"],
            "properties": {
                "steps": _INT,
                "final_val_loss": {"type": ["number", "null"], "description": "validation "
                                   "loss estimated from eval_iters random batches at the last "
                                   "step (a training-time estimate, not the evaluation)"},
                "best_val_loss": _NUM_OR_NULL,
                "train_time_s": {"type": "number", "description": "wall seconds, resumes summed"},
                "tokens_per_s": {"type": "number", "description": "median over log intervals"},
                "step_time_ms": _STEP_TIME,
                "params": _INT, "pos_params": _INT, "peak_mem_mb": _NUM_OR_NULL,
                "peak_mem_kind": {"enum": ["cuda_max_allocated", "rss_peak_during_run",
                                           "rss_peak_process", "unknown"]},
                "curves": {"type": "object", "required": ["train", "val"],
                           "properties": {"train": _CURVE, "val": _CURVE}},
                "checks": {"type": "array", "description": "convergence checks (objectives "
                           "with a criterion): step and validation accuracy",
                           "items": {"type": "object", "required": ["step", "val_accuracy"],
                                     "properties": {"step": _INT, "val_accuracy": _NUM}}},
                "stopped": {"enum": ["criterion", "budget"],
                            "description": "why training ended"},
                "criterion": {"type": "number", "description": "the accuracy a check had to "
                              "reach (objectives with a criterion)"},
            },
        },
        "pos_state": {"type": "object", "description": "the encoding's learned scalars that "
                      "matter for reading it (sinusoidal: scale and initial_scale)"},
        "generation": {"type": "array", "items": {
            "type": "object", "required": ["temperature", "text", *GEN_METRICS],
            "properties": {"temperature": _NUM, "text": _STR, **_GEN_METRICS}}},
    },
}

AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pos", "seeds", "extrapolates", "final_val_loss", "steps",
                 "train_time_s", "tokens_per_s", "step_time_ms", "params", "pos_params",
                 "peak_mem_mb", "pos_state", "generation"],
    "properties": {
        "pos": _STR, "seeds": _INT, "extrapolates": _BOOL,
        **{k: _STATS for k in ("final_val_loss", "steps", "train_time_s",
                               "tokens_per_s", "step_time_ms", "params", "pos_params",
                               "peak_mem_mb")},
        "pos_state": {"type": "object"},
        "generation": {"type": "array", "items": {
            "type": "object", "required": ["temperature"],
            "properties": {"temperature": _NUM, **{k: _STATS for k in GEN_METRICS}}}},
    },
}

BASE_SCHEMA: dict[str, Any] = {  # the objectives' fragments are added by study.schema
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/minigpt/minigpt/schemas/compare-results-v3.json",
    "title": "minigpt compare results",
    "description": "One record per run (encoding x seed), per-encoding aggregates (mean, "
                   "sample std over seeds), the study settings and the environment. Losses are "
                   "natural-log cross-entropy per token; ppl = exp(loss). Each objective adds "
                   "its own fields: language modelling (task 'lm') fills length_generalization "
                   "and length_ppl; an algorithmic task fills task_accuracy, accuracy and its "
                   "baselines.",
    "type": "object",
    "required": ["schema", "schema_version", "created", "study", "environment", "runs",
                 "aggregates", "summary"],
    "properties": {
        "schema": {"const": SCHEMA},
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string", "description": "ISO 8601 time, UTC"},
        "study": {
            "type": "object",
            "required": ["preset", "task", "encodings", "seeds", "run_order", "block_size",
                         "lengths", "eval_tokens", "eval_stride", "task_instances",
                         "temperatures", "sample_tokens", "fingerprint", "base_config",
                         "held_equal", "verification", "wall_s"],
            "properties": {
                "preset": _STR, "task": _STR, "encodings": {"type": "array", "items": _STR},
                "seeds": {"type": "array", "items": _INT},
                "run_order": {"type": "array", "items": _STR,
                              "description": "the order runs trained in (rotated per seed)"},
                "block_size": _INT,
                "lengths": {"type": "array", "items": _INT,
                            "description": "tokens (lm) or instance lengths (tasks)"},
                "eval_tokens": _INT, "eval_stride": _INT, "task_instances": _INT,
                "temperatures": _NUMS, "sample_tokens": _INT, "fingerprint": _STR,
                "wall_s": {"type": "number", "description": "wall seconds of the invocation "
                           "that wrote these results"},
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
                         "device_name", "torch_threads", "cpu_count", "cpu_flags", "jobs",
                         "train_precision"],
            "properties": {"python": _STR, "torch": _STR, "numpy": _STR, "minigpt": _STR,
                           "platform": _STR, "device": _STR, "device_name": _STR,
                           "torch_threads": {"type": "integer", "description": "threads per "
                                             "run"},
                           "cpu_count": {"type": ["integer", "null"]},
                           "cpu_flags": {"type": "string", "description": "widest vector unit "
                                         "and native bf16 support"},
                           "jobs": {"type": "integer", "description": "runs trained at once"},
                           "train_precision": {"type": "string", "description": "float32 or "
                                               "the autocast dtype training used"}},
        },
        "runs": {"type": "array", "items": RUN_SCHEMA},
        "aggregates": {"type": "array", "items": AGGREGATE_SCHEMA},
        "summary": {"type": "object", "required": ["text", "findings"],
                    "properties": {"text": _STR, "findings": {
                        "type": "object", "description": "the summary's readings as data; "
                        "findings.comparisons lists every comparison it made: key, mean "
                        "difference, 95% interval, p and Holm-adjusted p, and whether it is "
                        "called a difference"}}},
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
        "<!-- generated from minigpt.study.schema.RESULTS_SCHEMA by `python -m "
        "minigpt.study.schema > docs/results-schema.md`; tests/test_docs.py checks it is "
        "current -->",
        "",
        schema.get("description", ""),
        "",
        f"JSON Schema id: `{schema.get('$id', '')}` (the full schema is "
        "`minigpt.study.schema.RESULTS_SCHEMA`; the tests validate every study's `results.json` "
        "against it).",
        "",
        "| field | type | required | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ])



