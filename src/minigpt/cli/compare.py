"""`minigpt compare`: the positional-encoding study (train, evaluate, report). The study's
flags come from `StudySettings`, the model and training flags from the run configs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_flags, add_settings_flags, given_settings, overrides


def register(sub: argparse._SubParsersAction) -> None:
    from ..study.settings import StudySettings

    p = sub.add_parser(
        "compare", help="train one model per positional encoding and compare them",
        description="Train one model per positional encoding (and seed) on the same task with "
                    "everything else held equal, then measure them at and past the trained "
                    "length: perplexity on text against the window baseline (--task lm, with "
                    "samples), or exact-match accuracy on an algorithmic task against "
                    "input-blind baselines (--task copy|reverse|add|recall|passkey), trained to "
                    "a convergence criterion. With 2+ seeds the summary ranks beyond noise "
                    "(hierarchical bootstrap, Holm-corrected); with one seed it only describes. "
                    "Writes results.json, report.md, report.html and plots into --out. "
                    "Re-running skips finished runs and resumes an interrupted one.")
    p.add_argument("--out", default="runs/compare", metavar="PATH",
                   help="study directory (default: runs/compare)")
    p.add_argument("--force", action="store_true",
                   help="accept changed settings for an existing --out: retrain the runs "
                        "whose training config changed (only the new ones when encodings were "
                        "added), re-evaluate the rest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_settings_flags(p, StudySettings, "study settings")
    add_config_flags(p, skip={"pos"}, preset_name="quick", over="--preset")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import STUDY_PRESETS, preset, preset_names
    from ..errors import ConfigError
    from ..runtime import is_main_process
    from ..study import make_study, run_study
    from ..text import plural

    say = print if is_main_process() else (lambda *a, **k: None)  # rank 0 speaks for a DDP job
    settings = given_settings(args)
    name = settings.pop("preset", "quick")
    if name not in STUDY_PRESETS:
        raise ConfigError(f"compare takes a study preset, not {name!r}; the "
                          f"{preset_names()} (set a model's shapes here with --d-model, "
                          "--n-layer, ...).")
    model_o, train_o = overrides(args, preset(name))
    study = make_study(name, model=model_o, train=train_o, **settings)
    out = Path(args.out)
    runs = study.runs()
    extra = (f" + {plural(len(study.variants), 'rope variant')}" if study.variants else "")
    say(f"minigpt compare ({study.objective.title}): "
        f"{plural(len(study.encodings), 'encoding')} ({', '.join(study.encodings)}){extra} x "
        f"{plural(len(study.seeds), 'seed')} = {plural(len(runs), 'run')}, "
        f"L = {study.block_size}, lengths {', '.join(map(str, study.lengths))} -> {out}",
        flush=True)
    outcome = run_study(study, out, force=args.force, progress=not args.quiet,
                        log=lambda m: say(m, flush=True))
    if outcome.interrupted:
        return 130
    if not is_main_process():
        return 0
    print(f"trained {len(outcome.trained)}, skipped "
          f"{plural(len(outcome.skipped), 'finished run')}")
    print(outcome.results["summary"]["text"] if outcome.results else "")
    print(f"report: {out / 'report.html'} (also report.md, results.json, *.png)")
    return 0
