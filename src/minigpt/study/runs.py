"""Running a study's runs: train (or resume) each to its criterion or budget, evaluate it, and
write its record; one after another, or several at once in separate processes (`--jobs`).

A run's directory is an ordinary checkpoint directory plus trained.json (peak memory, the
convergence checks and why training stopped) and result.json (its evaluation). Everything is
resumable: a run interrupted anywhere restarts from its last checkpoint, and a finished one is
skipped (or only re-evaluated when the evaluation settings changed).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, merge
from ..files import atomic_write_json
from ..runtime import is_main_process, resolve_device
from .records import read_peak, read_trained, reset_peak, run_record
from .settings import Study
from .state import CHECKS, STOP, checks_of, ensure_prepared, run_state, uses_criterion

Log = Callable[[str], None]


@dataclass
class Job:
    """One run to do: everything a worker process needs (all picklable)."""

    study: Study
    out: Path
    name: str
    pos: str
    seed: int
    index: int  # 1-based, for messages
    vocab: int
    force: bool
    progress: bool


def do_run(job: Job, log: Log, data: Any = None) -> str:
    """Train (or resume), evaluate and record one run: 'trained', 'evaluated', 'skipped' or
    'interrupted'. `data` is the study's dataset when the caller has it (built if not)."""
    from .. import checkpoint

    study = job.study
    variant = study.variant(job.pos)
    if variant is not None:
        from .variant_runs import do_variant

        return do_variant(job, variant, log, data)
    if job.pos == "rope" and job.seed in study.adopted:  # an existing checkpoint: evaluate it
        from .variant_runs import do_adopted

        return do_adopted(job, study.adopted[job.seed], log, data)
    cfg = merge(study.run_config(job.pos, job.seed), {"vocab_size": job.vocab}, {},
                where=f"run {job.name}")
    run_dir = job.out / "runs" / job.name
    tag = f"[{job.index}/{len(study.runs())}] {job.name}"
    state, start = run_state(run_dir, cfg, study, job.force)
    if state == "done":
        log(f"{tag}: finished earlier, skipped")
        return "skipped"
    if STOP["requested"]:
        return "interrupted"
    if data is None:
        data = study.objective.data(study, False)
    if state == "trained":
        log(f"{tag}: trained earlier; evaluating")
    else:
        what = f"resuming from step {start}" if state == "partial" else "training"
        log(f"{tag}: {what} ({job.pos}, seed {job.seed}, up to {cfg.train.max_steps} steps)")
        if not train_run(cfg, run_dir, start, data, study, job.progress, log, tag):
            return "interrupted"
    if not is_main_process():
        return "trained"  # under DDP only rank 0 evaluates and writes
    ensure_prepared(study, data)
    model, tok, _, _ = checkpoint.load(run_dir, device=resolve_device(cfg.train.device))
    record = run_record(model, cfg, run_dir, job.name, study.objective.evaluate(
        model, tok, cfg, study))
    if uses_criterion(study):
        record["training"]["criterion"] = study.settings.criterion
    record["eval_fingerprint"] = study.eval_fingerprint()
    atomic_write_json(run_dir / "result.json", record)
    return "trained" if state != "trained" else "evaluated"


def train_run(cfg: RunConfig, run_dir: Path, step: int, data: Any, study: Study,
              progress: bool, log: Log, tag: str) -> bool:
    """Train one run from its saved `step` (0: a fresh run) to its criterion (checked every
    check_every steps) or to max_steps; False when it was interrupted (Ctrl-C)."""
    from ..checkpoint import load
    from ..training import train

    device = resolve_device(cfg.train.device)
    reset_ok = reset_peak(device)
    every = study.settings.check_every if uses_criterion(study) else cfg.train.max_steps
    resume = step > 0
    checks = checks_of(run_dir) if resume else []
    stopped = "budget"
    while step < cfg.train.max_steps:
        until = min(cfg.train.max_steps, (step // every + 1) * every)
        res = train(cfg, run_dir, resume=resume, until=until, progress=progress, data=data,
                    log=log)
        if res.interrupted or STOP["requested"]:
            return False
        resume, step = True, res.step
        if not uses_criterion(study):
            continue
        model = load(run_dir, device=device)[0]
        acc = _agree(study.objective.converged(model, study, data), device)
        checks.append({"step": step, "val_accuracy": acc})
        if is_main_process():
            atomic_write_json(run_dir / CHECKS, checks)
        log(f"{tag}: step {step}, validation accuracy {acc:.3f} "
            f"(criterion {study.settings.criterion:g})")
        if acc >= study.settings.criterion:
            stopped = "criterion"
            break
    if is_main_process():
        peak, kind = read_peak(device, reset_ok)
        old = read_trained(run_dir)
        atomic_write_json(run_dir / "trained.json", {
            "peak_mem_mb": max(peak or 0, old.get("peak_mem_mb") or 0) or None,
            "peak_mem_kind": kind, "device": str(device), "checks": checks, "stopped": stopped})
    return True


def _agree(value: float, device: Any) -> float:
    """Under torchrun every rank takes rank 0's number, so all stop at the same check."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value if dist.get_rank() == 0 else 0.0], device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


# --- several runs at once ----------------------------------------------------------------------

@dataclass
class Plan:
    """How many runs train at once and with how many threads each, and why."""

    jobs: int
    threads: int
    devices: list[str] = field(default_factory=list)
    why: str = ""


def plan_jobs(study: Study, requested: int) -> Plan:
    """--jobs N, or the default: on a CPU one run per core, each single-threaded (small models
    are latency-bound: measured on a 2-core AVX512-BF16 CPU at the quick shapes, two
    one-thread runs at once train 1.3-1.5x the study throughput of one two-thread run, see
    docs/study.md); one run per GPU with several GPUs; one run under torchrun."""
    import torch

    runs = len(study.runs())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return Plan(1, torch.get_num_threads(), why="torchrun: the ranks share each run")
    dev = study.base.train.device
    gpus = torch.cuda.device_count() if dev in ("auto", "cuda") and torch.cuda.is_available() \
        else 0
    if gpus:
        n = min(requested or gpus, gpus, runs)
        return Plan(n, torch.get_num_threads(), [f"cuda:{i}" for i in range(n)],
                    f"{n} of {gpus} GPUs, one run each")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    n = max(1, min(requested or cpus, runs))
    threads = max(1, cpus // n)
    why = ("--jobs" if requested else "default: one run per CPU core")
    return Plan(n, threads, why=f"{why}; {cpus} cores, {threads} thread(s) per run")




def _note_stop(signum: int, frame: Any) -> None:
    STOP["requested"] = True


def _init_worker(threads: int, devices: Any) -> None:
    import torch

    os.setpgrp()  # the terminal's Ctrl-C reaches the study, which passes on exactly one
    signal.signal(signal.SIGINT, _note_stop)  # training installs its own handler meanwhile
    torch.set_num_threads(threads)
    if devices is not None:
        os.environ["MINIGPT_STUDY_DEVICE"] = devices.get()


def _work(job: Job) -> tuple[str, str]:
    device = os.environ.get("MINIGPT_STUDY_DEVICE")
    if device:
        base = job.study.base
        job.study.base = merge(base, {}, {"device": device}, where="study device")
    try:
        return job.name, do_run(job, lambda m: print(m, flush=True))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint kept
        return job.name, "interrupted"


def run_parallel(jobs: list[Job], plan: Plan, log: Log) -> tuple[list[str], list[str], bool]:
    """Run `jobs` in `plan.jobs` worker processes; (trained, skipped, interrupted)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    devices = None
    if plan.devices:
        devices = ctx.Manager().Queue()
        for d in plan.devices:
            devices.put(d)
    trained, skipped, interrupted = [], [], False
    pool = ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(plan.threads, devices))
    pending = {pool.submit(_work, j) for j in jobs}
    signals = {"n": 0}

    def on_signal(signum: int, frame: Any) -> None:  # installed explicitly: a study started
        signals["n"] += 1  # with SIGINT ignored (in the background) still stops on it
        _signal_workers(pool)  # each run stops at a saved step; a second signal at once

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        announced = False
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if signals["n"] and not announced:
                interrupted = announced = True
                log("stopping: every running run saves a checkpoint at its next step "
                    "(Ctrl-C again stops them at once)")
                for f in pending:
                    f.cancel()
            for f in done:
                if f.cancelled():
                    continue
                name, status = f.result()
                if status == "interrupted":
                    interrupted = True
                elif status == "skipped":
                    skipped.append(name)
                elif status == "trained":
                    trained.append(name)
            pending = {f for f in pending if not f.cancelled()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return trained, skipped, interrupted


def _signal_workers(pool: Any) -> None:
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(proc.pid, signal.SIGINT)
        except (ProcessLookupError, OSError):
            pass


def run_sequential(jobs: list[Job], data: Any, log: Log) -> tuple[list[str], list[str], bool]:
    """Run `jobs` one after another in this process, with a study ETA."""
    trained, skipped = [], []
    spent, steps = 0.0, 0
    for j in jobs:
        t0 = time.perf_counter()
        if steps:
            left = j.study.base.train.max_steps * (len(jobs) - j.index + 1)
            log(f"study ETA at most {_fmt_s(left * spent / steps)}")
        status = do_run(j, log, data)
        if status == "interrupted":
            return trained, skipped, True
        if status == "skipped":
            skipped.append(j.name)
            continue
        if status == "trained":
            trained.append(j.name)
            spent += time.perf_counter() - t0
            steps += j.study.base.train.max_steps
    return trained, skipped, False


def _fmt_s(s: float) -> str:
    s = round(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
