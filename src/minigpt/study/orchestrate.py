"""A whole study in `out`: refuse another study's directory, check fairness, train and evaluate
every run (resumably, several at once where that is faster), then collect results.json and
write the report.

    out/
      study.json            the settings, their fingerprint and the study's status
      runs/<pos>-s<seed>/   an ordinary checkpoint directory per run (sample or visualize it
                            later), plus result.json (its evaluation) and trained.json
      results.json          every run's record + study settings + environment (RESULTS_SCHEMA)
      report.md, report.html, *.png

Re-running with the same --out skips finished runs and resumes an interrupted one; changed
settings are refused unless --force, which then retrains only the runs whose training
configuration changed (and re-evaluates the rest if only evaluation settings changed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..version import __version__
from ..errors import MiniGPTError
from ..files import atomic_write_json, exclusive, read_json
from ..results_schema import SCHEMA, SCHEMA_VERSION, validate
from ..runtime import is_main_process, resolve_device
from .variants import study_fields as extension_fields
from .fairness import held_equal, verify_shared_init
from .records import aggregate, environment
from .render import write_report
from .runs import Job, plan_jobs, run_parallel, run_sequential
from .state import ensure_prepared
from .settings import Study, diff_settings
from .paragraph import summarize

Log = Callable[[str], None]
LOCK = "study.lock"  # held by the compare writing to the study


@dataclass
class StudyOutcome:
    out: Path
    results: dict[str, Any] | None  # None when interrupted
    trained: list[str]
    skipped: list[str]
    interrupted: bool = False
    jobs: int = 1


def check_out(study: Study, out: Path, force: bool, log: Log) -> None:
    """Refuse an --out that holds another study (or something else) unless --force."""
    path = out / "study.json"
    if path.exists():
        old = read_json(path, "study file")
        if not isinstance(old, dict) or old.get("fingerprint") != study.fingerprint():
            changed = diff_settings(old.get("settings") if isinstance(old, dict) else None,
                                    study.as_dict())
            what = "; ".join(changed[:6]) or "unknown"
            if not force:
                added = _only_added_encodings(old, study)
                hint = (f"pass --force to train only the new encoding(s) {', '.join(added)} "
                        "(the finished runs are kept)" if added else
                        "pass --force to retrain the runs whose training settings changed "
                        "(the others are kept or only re-evaluated)")
                raise MiniGPTError(f"{out} holds a study with other settings ({what}); {hint}, "
                                   "or choose another --out.")
            log(f"settings changed ({what}); --force: runs whose training config changed are "
                "retrained, the others kept or re-evaluated as needed.")
    elif out.exists() and any(out.iterdir()) and not (out / "runs").is_dir() and not force:
        raise MiniGPTError(f"{out} exists, is not empty and holds no study (study.json); "
                           "choose another --out or pass --force to write into it.")


def _only_added_encodings(old: Any, study: Study) -> list[str]:
    """The encodings this study adds when that is its only change, else []."""
    try:
        before = dict(old["settings"])
    except (KeyError, TypeError):
        return []
    now = study.as_dict()
    added = [p for p in now["encodings"] if p not in before.get("encodings", [])]
    before["encodings"] = now["encodings"]
    return added if added and before == now else []


def write_study_file(study: Study, out: Path, status: str) -> None:
    if not is_main_process():
        return
    atomic_write_json(out / "study.json", {
        "format": "minigpt-compare-study", "version": SCHEMA_VERSION,
        "minigpt_version": __version__, "status": status,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": study.fingerprint(), "settings": study.as_dict(),
        "runs": [name for name, _, _ in study.runs()]})


def run_study(study: Study, out: str | Path, *, force: bool = False, progress: bool = True,
              log: Log = print) -> StudyOutcome:
    """Train, evaluate and report every run of the study in `out` (resumable)."""
    t0 = time.perf_counter()
    out = Path(out)
    data = study.objective.data(study, progress)  # bad data: nothing created yet
    data.check_block(study.block_size)
    check_out(study, out, force, log)
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniGPTError(f"cannot create output directory {out}: {e.strerror}.") from None
    busy = (f"another minigpt compare is writing to {out} (it holds {out / LOCK}); wait for it "
            "to finish or stop it, or choose another --out.")
    lock = exclusive(out / LOCK, busy) if is_main_process() else nullcontext()
    with lock:  # two studies training the same runs at once would corrupt them
        return _train_and_report(study, out, data, force, progress, log, t0)


def _train_and_report(study: Study, out: Path, data: Any, force: bool, progress: bool,
                      log: Log, t0: float) -> StudyOutcome:
    write_study_file(study, out, "running")
    vocab = data.tokenizer.vocab_size
    verification = verify_shared_init(study, vocab)
    ensure_prepared(study, data)
    plan = plan_jobs(study, study.settings.jobs)
    log(f"{plan.jobs} run(s) at a time ({plan.why})")
    jobs = [Job(study, out, name, pos, seed, i, vocab, force, progress and plan.jobs == 1)
            for i, (name, pos, seed) in enumerate(study.runs(), 1)]
    trained, skipped, interrupted = _run_jobs(study, jobs, plan, data, log)
    if interrupted:
        write_study_file(study, out, "interrupted")
        log("study interrupted; every finished step is saved: run the same command again "
            "to resume.")
        return StudyOutcome(out, None, trained, skipped, interrupted=True, jobs=plan.jobs)
    if not is_main_process():
        return StudyOutcome(out, None, trained, skipped)
    device = resolve_device(study.base.train.device)
    results = collect_results(study, out, vocab, device, verification, plan)
    results["study"]["wall_s"] = time.perf_counter() - t0
    results["summary"] = summarize(results, study.objective)
    from .schema import build_schema  # late: `python -m minigpt.study.schema` stays clean

    errors = validate(results, build_schema())
    if errors:  # a bug, not a user error
        raise RuntimeError("results.json does not match its schema: " + "; ".join(errors[:5]))
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    write_study_file(study, out, "complete")
    return StudyOutcome(out, results, trained, skipped, jobs=plan.jobs)


def _run_jobs(study: Study, jobs: list[Job], plan: Any, data: Any, log: Log
              ) -> tuple[list[str], list[str], bool]:
    """Every run, several at once or one after another: (trained, skipped, interrupted)."""
    try:
        if plan.jobs > 1:  # the variants start from the rope runs: those first
            first = [j for j in jobs if study.variant(j.pos) is None]
            trained, skipped, interrupted = run_parallel(first, plan, log)
            then = [j for j in jobs if study.variant(j.pos) is not None]
            if then and not interrupted:
                more = run_parallel(then, plan, log)
                trained, skipped, interrupted = trained + more[0], skipped + more[1], more[2]
            return trained, skipped, interrupted
        return run_sequential(jobs, data, log)
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one during evaluation
        return [], [], True


def collect_results(study: Study, out: Path, vocab: int, device: Any,
                    verification: dict[str, Any], plan: Any) -> dict[str, Any]:
    runs = []
    for name, _, _ in study.runs():
        rec = json.loads((out / "runs" / name / "result.json").read_text(encoding="utf-8"))
        rec.pop("eval_fingerprint", None)
        runs.append(rec)
    order = [name for name, _, _ in study.runs()]
    runs.sort(key=lambda r: (study.seeds.index(r["seed"]), study.contenders.index(r["pos"])))
    t = study.base.train
    base = study.base.to_dict()
    base["model"]["vocab_size"] = vocab
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": {
            "preset": study.preset, "task": study.task, "encodings": study.contenders,
            "seeds": study.seeds, "run_order": order, "block_size": study.block_size,
            "lengths": study.lengths, "eval_tokens": study.eval_tokens,
            "eval_stride": study.eval_stride, "task_instances": study.task_instances,
            **study.objective.study_fields(study), "extension": extension_fields(study),
            "temperatures": list(t.sample_temperatures),
            "sample_tokens": t.sample_tokens, "fingerprint": study.fingerprint(),
            "base_config": base,
            "held_equal": held_equal(study, vocab, verification, plan.jobs),
            "verification": verification, "wall_s": 0.0,
        },
        "environment": environment(device, study.base.train, plan.jobs, plan.threads),
        "runs": runs,
        "aggregates": aggregate(runs, study.contenders, study.objective),
    }
