"""`minigpt train`: train (or resume) one model into a checkpoint directory."""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path

from ..errors import MiniGPTError
from .options import add_config_flags, build_config, describe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a GPT",
        description="Train a GPT and checkpoint it into --out. Interrupt it with Ctrl-C (it "
                    "saves a checkpoint) and continue with the same command plus --resume.")
    p.add_argument("--preset", metavar="NAME",
                   help="starting settings: a model preset (tiny, small, shakespeare-char, "
                        "gpt2) or a study preset of minigpt compare (quick, full); default small")
    p.add_argument("--config", metavar="PATH",
                   help="TOML file with [model] and [train] tables (over the preset)")
    p.add_argument("--out", default="runs/train", metavar="PATH",
                   help="checkpoint directory (default: runs/train)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out; other flags may repeat its settings, and "
                        "only --max-steps, --device, --eval-interval, --log-interval, --compile "
                        "and the --sample-* settings may change")
    p.add_argument("--init-from", metavar="PATH",
                   help="start from this checkpoint's weights, model shapes and tokenizer")
    p.add_argument("--until", type=int, metavar="STEP",
                   help="stop after this step with a resumable checkpoint")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or per-step lines; the header and summary remain")
    add_config_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..generation import sample_text
    from ..runtime import is_main_process
    from ..training import flags_base, train

    out = Path(args.out)
    main = is_main_process()
    if args.until is not None and args.until < 1:
        raise MiniGPTError(f"--until must be a positive step number, got {args.until}.")
    base, init_model = flags_base(out, resume=args.resume, init_from=args.init_from)
    cfg = build_config(args, base=base, init_model=init_model)
    say = print if main else (lambda *a, **k: None)
    opening = [f"minigpt train: {describe(cfg)} -> {out}"]

    def log(message: str) -> None:
        # the settings line waits for training's first message, so input that training
        # refuses (a data path, a run already there, a changed setting) gets only its error
        while opening:
            say(opening.pop(), flush=True)
        say(message, flush=True)

    result = train(cfg, out, resume=args.resume, until=args.until, progress=not args.quiet,
                   init_from=args.init_from, log=log)
    if not main or result.nothing_to_do:
        return 0  # under torchrun only rank 0 reports and samples; nothing new to report
    best = (f"best val loss {result.best_val_loss:.4f}" if math.isfinite(result.best_val_loss)
            else "no evaluation yet")
    print(f"step {result.step}: {best}, {result.tokens_per_s:,.0f} tokens/s, "
          f"{result.elapsed:.1f}s")
    if result.interrupted:
        again = shlex.join(["minigpt", *(a for a in args.argv if a != "--resume"), "--resume"])
        print(f"to continue, run the same command with --resume: {again}")
        return 0
    if result.step < cfg.train.max_steps or not cfg.train.sample_tokens:
        return 0
    from ..checkpoint import load

    model, tok, _, _ = load(out)
    prompt = cfg.train.sample_prompt
    for t in cfg.train.sample_temperatures:
        text = sample_text(model, tok, prompt, settings=cfg.train.sampling(t))[0]
        print(f"\n--- sample at temperature {t} ---\n{text}")
    return 0
