"""`minigpt sample`: stream text from a checkpoint."""

from __future__ import annotations

import argparse
import sys
import typing

from ..config import Dtype, Quantize
from .options import add_extension_flags, extension


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint, streaming tokens.")
    p.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint directory")
    p.add_argument("--prompt", default="", metavar="TEXT",
                   help="text to continue (default: empty, start from a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="tokens to generate per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="FLOAT",
                   help="divide the logits by this; 0 means greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, metavar="N",
                   help="keep only the N most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None, metavar="FLOAT",
                   help="nucleus sampling: keep the most likely tokens up to this probability "
                        "mass (default: 1, all)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="independent samples (default: 1)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="random seed; the same seed gives the same text (default: 0)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="latest weights, or those with the best validation loss (default: last)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole window for every token instead of using the "
                        "key/value cache (slower; for checking)")
    p.add_argument("--dtype", choices=typing.get_args(Dtype), default="auto",
                   help="weights for sampling: auto (the format, int8 included, whose matrix "
                        "products measure fastest here; measured once, cached), float32 "
                        "(exact) or bfloat16 (default: auto)")
    p.add_argument("--quantize", choices=typing.get_args(Quantize), default="none",
                   help="int8: weight-only int8 linear layers with one scale per output "
                        "channel (about half the bytes of bf16 per token) (default: none)")
    p.add_argument("--speculate", choices=["ngram"], default=None,
                   help="ngram: draft tokens by prompt lookup and check them in one pass "
                        "(the same greedy text in fewer passes; needs the cache) (default: off)")
    add_extension_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..generation import stream_text
    from ..runtime import resolve_device

    model, tok, _, _ = load(args.ckpt, which=args.which, device=resolve_device(args.device),
                            extension=extension(args))
    pieces = stream_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         seed=args.seed, num_samples=args.num_samples,
                         use_cache=not args.no_cache, dtype=args.dtype, quantize=args.quantize,
                         speculate=args.speculate,
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
