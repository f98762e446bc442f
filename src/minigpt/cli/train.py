"""`minigpt train`: train (or resume) one model into a checkpoint directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import MiniGPTError
from .options import add_config_flags, build_config, describe, overrides

# settings a resumed run may change; anything else would make it a different run
RESUMABLE = {"max_steps", "device", "eval_interval", "log_interval", "compile", "sample_tokens",
             "sample_temperatures", "sample_prompt"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GPT", description="Train a GPT and checkpoint it.")
    p.add_argument("--preset", help="tiny, small (default), shakespeare-char or gpt2")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with [model] and [train]")
    p.add_argument("--out", default="runs/train", help="checkpoint directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", metavar="DIR",
                   help="start from this checkpoint's weights, model shapes and tokenizer")
    p.add_argument("--until", type=int, metavar="STEP",
                   help="stop after this step with a resumable checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import check_trainer_state, check_weights, read_config
    from ..config import merge
    from ..generation import sample_text
    from ..training import train

    out = Path(args.out)
    if args.until is not None and args.until < 1:
        raise MiniGPTError(f"--until must be a positive step number, got {args.until}.")
    if args.resume:
        if args.preset or args.config:
            raise MiniGPTError("--resume continues the saved config; drop --preset and --config.")
        model_o, train_o = overrides(args)
        changed = sorted(set(model_o) | (set(train_o) - RESUMABLE))
        if changed:
            raise MiniGPTError(f"--resume continues the saved config; only --max-steps and "
                               f"--device may change, not {', '.join(changed)}.")
        if not (out / "config.json").exists():
            raise MiniGPTError(f"cannot resume: {out} holds no run (no config.json).")
        cfg, _ = read_config(out)
        cfg = merge(cfg, None, train_o, where="command line")
        if not (out / "tokenizer.json").exists():
            raise MiniGPTError(f"cannot resume: {out} was stopped before its first checkpoint "
                               f"and holds no tokenizer.json; delete {out} and start again.")
        check_trainer_state(out, cfg)  # header only: nothing allocated for a tampered config
    else:
        cfg = build_config(args)
        if args.init_from:
            model_o, _ = overrides(args)
            if set(model_o) - {"dropout"}:
                raise MiniGPTError("--init-from takes the model shapes from the checkpoint; "
                                   "only --dropout may change.")
            src_cfg, _ = read_config(args.init_from)
            check_weights(Path(args.init_from), src_cfg)  # before a model of its size is built
            cfg = merge(cfg, {**vars(src_cfg.model), **model_o}, None, where="--init-from")
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"minigpt train: {describe(cfg)} -> {out}")
    result = train(cfg, out, resume=args.resume, until=args.until, progress=not args.quiet,
                   init_from=args.init_from)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports and samples
    print(f"step {result.step}: best val loss {result.best_val_loss:.4f}, "
          f"{result.tokens_per_s:,.0f} tokens/s, {result.elapsed:.1f}s")
    if result.interrupted or result.step < cfg.train.max_steps or not cfg.train.sample_tokens:
        return 0
    from ..checkpoint import load

    model, tok, _, _ = load(out)
    prompt = cfg.train.sample_prompt
    for t in cfg.train.sample_temperatures:
        text = sample_text(model, tok, prompt, max_new_tokens=cfg.train.sample_tokens,
                           temperature=t, seed=cfg.train.seed)[0]
        print(f"\n--- sample at temperature {t} ---\n{text}")
    return 0
