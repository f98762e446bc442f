"""`minigpt compare`: the positional-encoding study (train, evaluate, report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_flags, overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="train one model per positional encoding and compare them",
        description="Train one model per positional encoding (and seed) on the same task with "
                    "everything else held equal, then measure them at and past the trained "
                    "length: perplexity on text (--task lm, with samples), or exact-match "
                    "accuracy on an algorithmic task (--task copy|reverse|add|recall). Writes "
                    "results.json, report.md, report.html and plots into --out. Re-running "
                    "skips finished runs and resumes an interrupted one.")
    p.add_argument("--pos", metavar="A,B,...",
                   help="encodings to compare (default learned,sinusoidal,rope,alibi,nope; "
                        "t5 also available)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per encoding: --seed, --seed+1, ... (default: quick 1, full 3)")
    p.add_argument("--preset", metavar="NAME", default="quick",
                   help="study preset: quick (default; minutes on a laptop CPU) or full "
                        "(longer training, 3 seeds; for a GPU)")
    p.add_argument("--lengths", metavar="LIST",
                   help="evaluation lengths. lm: multiples of the trained length L such as "
                        "1x,2x,4x,8x (default) or token counts such as 64,128,256; L is "
                        "always included. Tasks: instance lengths, as multiples of the longest "
                        "trained instance (default 0.5x,1x,1.5x,2x,3x,4x) or counts such as 8,16")
    p.add_argument("--task", default="lm", metavar="NAME",
                   help="what the models learn: lm (language modelling on --data, default) or "
                        "an algorithmic task scored by exact match: copy, reverse, add, recall")
    p.add_argument("--eval-tokens", type=int, metavar="N",
                   help="lm: validation targets scored at every length (default: quick 8192, "
                        "full 32768)")
    p.add_argument("--eval-stride", type=int, metavar="N",
                   help="lm: windows move by N tokens and score their last N, so every scored "
                        "token has T-N to T-1 tokens of context (default and maximum L/2)")
    p.add_argument("--task-instances", type=int, metavar="N",
                   help="tasks: held-out instances per test length (default: quick 200, "
                        "full 500)")
    p.add_argument("--out", default="runs/compare", metavar="PATH",
                   help="study directory (default: runs/compare)")
    p.add_argument("--force", action="store_true",
                   help="accept changed settings for an existing --out: retrain the runs "
                        "whose training config changed, re-evaluate the rest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(p, skip={"pos"}, preset_name="quick", over="--preset")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import make_study, run_study
    from ..config import STUDY_PRESETS, preset, preset_names
    from ..errors import ConfigError
    from ..runtime import is_main_process
    from ..text import plural

    say = print if is_main_process() else (lambda *a, **k: None)  # rank 0 speaks for a DDP job

    if args.preset not in STUDY_PRESETS:
        raise ConfigError(f"compare takes a study preset, not {args.preset!r}; the "
                          f"{preset_names()} (set a model's shapes here with --d-model, "
                          "--n-layer, ...).")
    model_o, train_o = overrides(args, preset(args.preset))
    study = make_study(args.preset, encodings=args.pos, seeds=args.seeds, lengths=args.lengths,
                       eval_tokens=args.eval_tokens, eval_stride=args.eval_stride,
                       task=args.task, task_instances=args.task_instances, model=model_o,
                       train=train_o)
    out = Path(args.out)
    runs = study.runs()
    what = "language modelling" if not study.is_task else f"task {study.task}"
    unit = "instance lengths" if study.is_task else "lengths"
    say(f"minigpt compare ({what}): {plural(len(study.encodings), 'encoding')} "
        f"({', '.join(study.encodings)}) x {plural(len(study.seeds), 'seed')} = "
        f"{plural(len(runs), 'run')}, L = {study.block_size}, "
        f"{unit} {', '.join(map(str, study.lengths))} -> {out}", flush=True)
    outcome = run_study(study, out, force=args.force, progress=not args.quiet,
                        log=lambda m: say(m, flush=True))
    if outcome.interrupted:
        return 130
    if not is_main_process():
        return 0
    print(f"trained {len(outcome.trained)}, skipped {plural(len(outcome.skipped), 'finished run')}")
    print(outcome.results["summary"]["text"] if outcome.results else "")
    print(f"report: {out / 'report.html'} (also report.md, results.json, *.png)")
    return 0
