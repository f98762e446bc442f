"""Records: one run's training curves and costs (from metrics.jsonl), the environment, peak
memory, and the per-encoding aggregates every objective shares."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..version import __version__
from ..metrics import read_metrics
from ..results_schema import GEN_METRICS
from ..runtime import autocast_dtype, cpu_flags, cpu_name
from .variants import aggregate_fields as variant_fields
from .stats import mean_std


def environment(device: Any, train_cfg: Any = None, jobs: int = 1,
                threads_per_job: int | None = None) -> dict[str, Any]:
    import numpy
    import torch

    amp = autocast_dtype(train_cfg, device) if train_cfg is not None else None
    if getattr(device, "type", "cpu") == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "minigpt": __version__, "platform": platform.platform(),
            "device": str(device), "device_name": name or "unknown",
            "torch_threads": threads_per_job or torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "jobs": jobs,
            "train_precision": f"{str(amp).removeprefix('torch.')} autocast" if amp
            else "float32"}


def reset_peak(device: Any) -> bool:
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


def read_peak(device: Any, reset_ok: bool) -> tuple[float | None, str]:
    import resource

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_peak_process"


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
    steps = max(train["step"] + val["step"], default=0)
    final = val["loss"][-1] if val["loss"] and val["step"][-1] == steps else None
    return {
        "steps": steps,
        "final_val_loss": final,
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


def run_record(model: Any, cfg: Any, run_dir: Path, name: str,
               evaluation: dict[str, Any]) -> dict[str, Any]:
    """One run's record: its training curves and costs plus what the objective measured."""
    rec = training_record(read_metrics(run_dir / "metrics.jsonl"), cfg.train.max_steps)
    trained = read_trained(run_dir)
    rec.update(params=model.num_params(), pos_params=model.pos.num_params(),
               peak_mem_mb=trained.get("peak_mem_mb"),
               peak_mem_kind=trained.get("peak_mem_kind", "unknown"),
               checks=trained.get("checks", []), stopped=trained.get("stopped", "budget"))
    return {"name": name, "pos": cfg.model.pos, "seed": cfg.train.seed, "dir": f"runs/{name}",
            "extrapolates": bool(model.pos.extrapolates), "config": cfg.to_dict(),
            "pos_state": learned_state(model), "training": rec, **evaluation}


def read_trained(run_dir: Path) -> dict[str, Any]:
    return read_dict(run_dir / "trained.json")


def read_dict(path: Path) -> dict[str, Any]:
    """A JSON object a run wrote, or {} where it is missing or unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def learned_state(model: Any) -> dict[str, float]:
    """The encoding's learned scalars that matter for reading it (the sinusoidal scale, next
    to the value it started from), from the encoding's `learned_summary` hook."""
    return {k: float(v) for k, v in model.pos.learned_summary().items()}


def aggregate(runs: list[dict[str, Any]], encodings: list[str], objective: Any
              ) -> list[dict[str, Any]]:
    """Per encoding: mean and sample std over seeds of the shared numbers, plus what the
    objective aggregates itself."""
    out = []
    for pos in encodings:
        rs = [r for r in runs if r["pos"] == pos]
        if not rs:
            continue
        tr = [r["training"] for r in rs]
        agg: dict[str, Any] = {"pos": pos, "seeds": len(rs), "extrapolates": rs[0]["extrapolates"]}
        for k in ("final_val_loss", "train_time_s", "tokens_per_s", "params", "pos_params",
                  "peak_mem_mb", "steps"):
            agg[k] = mean_std(t[k] for t in tr)
        agg["step_time_ms"] = mean_std(t["step_time_ms"]["median"] for t in tr)
        keys = sorted({k for r in rs for k in r.get("pos_state", {})})
        agg["pos_state"] = {k: mean_std(r["pos_state"].get(k) for r in rs) for k in keys}
        agg.update(objective.aggregate(rs))
        agg.update(variant_fields(rs))
        gen = []
        for j, g in enumerate(rs[0].get("generation", [])):
            col = [r["generation"][j] for r in rs if len(r["generation"]) > j]
            gen.append({"temperature": g["temperature"],
                        **{k: mean_std(c[k] for c in col) for k in GEN_METRICS}})
        agg["generation"] = gen
        out.append(agg)
    return out


def col_stats(rs: list[dict[str, Any]], key: str, fields: tuple[str, ...]
              ) -> list[dict[str, Any]]:
    """Per row of rs[*][key]["results"]: mean/std over seeds of each field."""
    rows = []
    for j, row in enumerate(rs[0][key]["results"]):
        col = [r[key]["results"][j] for r in rs]
        out = {k: row[k] for k in ("length", "multiple", "tokens", "dependency") if k in row}
        out.update({f: mean_std(c[f] for c in col) for f in fields})
        out["reason"] = next((c["reason"] for c in col if c["reason"]), None)
        out["untrained"] = next((c["untrained"] for c in col if c["untrained"]), None)
        rows.append(out)
    return rows
