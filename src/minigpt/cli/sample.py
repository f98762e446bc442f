"""`minigpt sample`: stream text from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from ..config import SamplingSettings
from .options import (add_extension_flags, add_settings_flags, add_which_flag, extension,
                      given_settings)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint, streaming tokens.")
    p.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint directory")
    p.add_argument("--prompt", default="", metavar="TEXT",
                   help="text to continue (default: empty, start from a newline)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="independent samples (default: 1)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    add_which_flag(p)
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole window for every token instead of using the "
                        "key/value cache (slower; for checking)")
    add_settings_flags(p, SamplingSettings, "sampling settings")
    add_extension_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..config import sampling_settings
    from ..generation import stream_text
    from ..runtime import resolve_device

    settings = sampling_settings(given_settings(args))  # checked before the model loads
    model, tok, _, _ = load(args.ckpt, which=args.which, device=resolve_device(args.device),
                            extension=extension(args))
    pieces = stream_text(model, tok, args.prompt, settings=settings,
                         num_samples=args.num_samples, use_cache=not args.no_cache,
                         warn=lambda m: print(m, file=sys.stderr))
    print(f"sampling with {pieces.info.describe()}", file=sys.stderr)
    if pieces.info.warning:
        print(pieces.info.warning, file=sys.stderr)
    sample = None
    for i, text in pieces:
        if i != sample:
            if sample is not None:
                sys.stdout.write("\n\n" + "-" * 40 + "\n")
            sample = i
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
