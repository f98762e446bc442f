"""`minigpt serve`: a local web playground for one or more checkpoints."""

from __future__ import annotations

import argparse

from ..config import WEIGHT_SETTINGS, SamplingSettings
from .options import add_settings_flags, add_which_flag, given_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web playground: streamed tokens, probabilities, attention",
        description="Serve a web page that streams generated tokens shaded by probability, "
                    "compares checkpoints side by side and shows their attention and "
                    "encoding. Needs pip install 'minigpt[serve]'. See docs/serve.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", action="append", metavar="PATH",
                     help="checkpoint directory (repeat for several)")
    src.add_argument("--study", metavar="PATH", help="every run of a `minigpt compare` output")
    p.add_argument("--host", default="127.0.0.1", metavar="TEXT",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, metavar="N",
                   help="port (default: 8000; 0: any free port)")
    add_which_flag(p)
    p.add_argument("--max-prompt-chars", type=int, default=2000, metavar="N",
                   help="longest prompt a request may send (default 2000)")
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N",
                   help="most tokens a request may ask for (default 500)")
    p.add_argument("--max-jobs", type=int, default=32, metavar="N",
                   help="generations at once; more are refused as busy (default 32)")
    add_settings_flags(p, SamplingSettings, "sampling weights (every model's)",
                       names=WEIGHT_SETTINGS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import sampling_settings
    from ..errors import MiniGPTError
    from ..serve import serve
    from ..serve.engine import Limits, find_runs

    for flag in ("max_prompt_chars", "max_new_tokens", "max_jobs"):
        if getattr(args, flag) < 1:
            raise MiniGPTError(f"--{flag.replace('_', '-')} must be at least 1, got "
                               f"{getattr(args, flag)}.")
    settings = sampling_settings(given_settings(args))
    ckpts = find_runs(args.study) if args.study else args.ckpt
    limits = Limits(args.max_prompt_chars, args.max_new_tokens, args.max_jobs)
    serve(ckpts, host=args.host, port=args.port, which=args.which, limits=limits,
          settings=settings, log=lambda m: print(m, flush=True))
    return 0
