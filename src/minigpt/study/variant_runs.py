"""Running the variants of the rope runs (`compare --extend`, see variants.py): a zero-shot
variant evaluates its rope run's weights loaded with the method; a fine-tuned one trains
from them at s x L first. An adopted rope checkpoint (`--rope-checkpoints`) is evaluated, never
trained. Each writes result.json with a stamp of the rope weights it came from, so a
retrained rope run redoes its variants and an unchanged one skips them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..config import merge
from ..errors import ConfigError, MiniGPTError
from ..files import atomic_write_json
from .records import read_dict, run_record
from .settings import run_name
from .state import STOP, ensure_prepared, run_state, uses_criterion
from .variants import EXTENDS, Variant, variant_config

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
    if STOP["requested"]:
        return "interrupted"
    if data is None:
        data = study.objective.data(study, False)
    started = time.perf_counter()
    if v.finetune_steps:
        status = _finetune(job, v, cfg, src, stamp, data, log, tag)
        if status in ("skipped", "interrupted"):
            return status
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
    _variant_fields(record, job, v, model, cfg, src)
    record["extension"]["eval_s"] = time.perf_counter() - started
    _write(run_dir, record, study, stamp)
    return "trained" if v.finetune_steps else "evaluated"


def _finetune(job: Any, v: Variant, cfg: Any, src: Path, stamp: dict[str, Any], data: Any,
              log: Any, tag: str) -> str:
    """Fine-tune (or resume fine-tuning) the variant's run from the rope run `src`:
    'trained', 'skipped' (done earlier) or 'interrupted'."""
    from ..training import train

    study, run_dir = job.study, job.out / "runs" / job.name
    prev = _stamp(run_dir)
    if prev and prev.get("base") != stamp["base"] and run_dir.exists():
        shutil.rmtree(run_dir)  # the rope run was retrained: so is its fine-tune
    state, step = run_state(run_dir, cfg, study, job.force)
    if state == "done" and _stamp(run_dir) == stamp:
        log(f"{tag}: finished earlier, skipped")
        return "skipped"
    if state in ("fresh", "partial"):
        log(f"{tag}: fine-tuning {run_name(EXTENDS, job.seed)} at {cfg.model.block_size} "
            f"tokens with {v.scaling}, {v.finetune_steps} steps" +
            (f" (resuming from step {step})" if step else ""))
        ft_data = study.objective.finetune_data(study, data, cfg.model.block_size)
        res = train(cfg, run_dir, resume=state == "partial", data=ft_data,
                    init_from=None if state == "partial" else src, progress=job.progress,
                    log=log)
        if res.interrupted or STOP["requested"]:
            return "interrupted"
    return "trained"


def _variant_fields(record: dict[str, Any], job: Any, v: Variant, model: Any, cfg: Any,
                    src: Path) -> None:
    """What makes a run record a variant's: its name, weights folder, the fine-tune's cost,
    and the rope run's convergence checks (a task reads convergence from them)."""
    base_name = run_name(EXTENDS, job.seed)
    if v.finetune_steps:  # the fine-tune's own cost
        ft = run_record(model, cfg, job.out / "runs" / job.name, job.name, {})["training"]
        cost = {"steps": ft["steps"], "time_s": ft["train_time_s"],
                "tokens": ft["steps"] * cfg.train.batch_size * cfg.train.grad_accum
                * cfg.model.block_size, "final_val_loss": ft["final_val_loss"]}
        record["dir"] = f"runs/{job.name}"
    else:
        cost = {"steps": 0, "time_s": 0.0, "tokens": 0, "final_val_loss": None}
        record["dir"] = _dir_text(job.out, src)
    if uses_criterion(job.study):
        base = read_dict(job.out / "runs" / base_name / "result.json")
        record["training"]["checks"] = base.get("training", {}).get("checks", [])
        record["training"]["criterion"] = job.study.settings.criterion
    record["pos"] = v.label
    record["extension"] = {**v.as_dict(), "base_run": base_name, "finetune": cost}


def _dir_text(out: Path, path: Path) -> str:
    """A run folder as results.json names it: relative to the study, or an adopted one's."""
    return f"runs/{path.name}" if path.parent == out / "runs" else str(path.resolve())


def _write(run_dir: Path, record: dict[str, Any], study: Any, stamp: dict[str, Any]) -> None:
    record["eval_fingerprint"] = study.eval_fingerprint()
    record["variant_stamp"] = stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "result.json", record)


def do_adopted(job: Any, src: Path, log: Any, data: Any = None) -> str:
    """Evaluate an adopted checkpoint as this seed's rope run (never trained or changed)."""
    from .. import checkpoint
    from ..runtime import resolve_device

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


def _stamp(run_dir: Path) -> Any:
    return read_dict(run_dir / "result.json").get("variant_stamp")


