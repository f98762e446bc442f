"""Where a study run stands (fresh, partial, trained or done) and the few process-wide facts
every kind of run reads: the objective's once-per-process preparation, whether it trains to a
criterion, and a worker's pending stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import MiniGPTError
from .diffs import config_diff

CHECKS = "checks.json"  # convergence checks so far (a resumed run keeps its history)
STOP = {"requested": False}  # a worker's Ctrl-C outside training (training has its own)


def run_state(run_dir: Path, cfg: RunConfig, study: Any, force: bool) -> tuple[str, int]:
    """fresh | partial (resume from step) | trained (evaluate) | done (skip)."""
    from ..checkpoint import STATE_FILE, read_config

    if not (run_dir / "config.json").exists():
        if (run_dir / STATE_FILE).exists():
            shutil.rmtree(run_dir)  # a half-written directory of ours: start over
        return "fresh", 0
    saved, raw = read_config(run_dir)
    diff = config_diff(saved, cfg)
    if diff:
        if not force:
            raise MiniGPTError(f"{run_dir} holds a run with other settings ({'; '.join(diff[:4])})"
                               "; pass --force to retrain it, or choose another --out.")
        shutil.rmtree(run_dir)
        return "fresh", 0
    if not (run_dir / STATE_FILE).exists():  # stopped before its first checkpoint
        shutil.rmtree(run_dir)
        return "fresh", 0
    step = int(raw.get("step", 0))
    if step < cfg.train.max_steps and not _reached(run_dir, study):
        return "partial", step
    try:
        done = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        if isinstance(done, dict) and done.get("eval_fingerprint") == study.eval_fingerprint():
            return "done", step
    except (OSError, json.JSONDecodeError):
        pass
    return "trained", step


def checks_of(run_dir: Path) -> list[dict[str, Any]]:
    try:
        raw = json.loads((run_dir / CHECKS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return raw if isinstance(raw, list) else []


def _reached(run_dir: Path, study: Any) -> bool:
    """Whether the run's last convergence check already met this study's criterion."""
    checks = checks_of(run_dir)
    return bool(checks) and checks[-1]["val_accuracy"] >= study.settings.criterion


def ensure_prepared(study: Any, data: Any) -> None:
    """The objective's once-per-study evaluation set-up, done once per process."""
    if not study.objective.prepared:
        study.objective.prepare(study, data)
        study.objective.prepared = True


def uses_criterion(study: Any) -> bool:
    from .objective import Objective

    return type(study.objective).converged is not Objective.converged
