"""`minigpt viz`: pictures of a positional encoding and of a checkpoint's attention."""

from __future__ import annotations

import argparse

from ..config import VIZ_SETTINGS, ModelConfig, choices, preset_value
from .options import show, add_extension_flags, add_model_flags, add_which_flag, extension


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "viz", help="draw what a positional encoding does (PNGs)",
        description="Draw a positional encoding (untrained from a preset, or from a "
                    "checkpoint) and, with --prompt, a checkpoint's attention maps; writes "
                    "PNGs into --out and prints their paths, one per line.")
    p.add_argument("--pos", metavar="NAME", choices=choices(ModelConfig, "pos"),
                   help="the positional encoding to draw: %(choices)s; encodings drawn from "
                        "trained values need --ckpt; taken from the checkpoint when omitted")
    p.add_argument("--ckpt", metavar="PATH", help="checkpoint directory of a trained model")
    p.add_argument("--out", metavar="PATH", required=True,
                   help="directory for the PNGs (created if missing)")
    p.add_argument("--prompt", metavar="TEXT",
                   help="with --ckpt: draw every layer's attention on this text")
    add_which_flag(p)
    g = p.add_argument_group("untrained encoding (without --ckpt)")
    g.add_argument("--preset", metavar="NAME",
                   help="model shapes to start from: tiny, small (default), shakespeare-char "
                        "or gpt2")
    add_model_flags(g, VIZ_SETTINGS, lambda name: f"the preset's; "
                    f"{show(preset_value('small', 'model', name))} in small")
    add_extension_flags(p)  # also with --ckpt: a rope checkpoint zero-shot
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..viz import draw

    overrides = {**{name: getattr(args, name) for name in VIZ_SETTINGS}, **extension(args)}
    paths = draw(args.pos, args.ckpt, args.out, args.prompt, preset_name=args.preset,
                 overrides=overrides, which=args.which, log=print)
    for path in paths:
        print(path)
    return 0
