"""`minigpt sample`: stream text from a checkpoint."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights for sampling: float32 (exact) or bfloat16 (half the "
                        "memory traffic; faster on CPUs with native bf16 and on GPUs) "
                        "(default: float32)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..errors import MiniGPTError
    from ..generation import check_sampling, sample_text
    from ..training import resolve_device

    check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    if args.num_samples < 1:
        raise MiniGPTError(f"--num-samples must be at least 1, got {args.num_samples}.")
    model, tok, _, _ = load(args.ckpt, which=args.which, device=resolve_device(args.device))
    if args.dtype == "bfloat16":
        import torch

        model.to(torch.bfloat16)
    tok.check_text(args.prompt)
    sample_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                num_samples=args.num_samples, stream=True, use_cache=not args.no_cache,
                warn=lambda m: print(m, file=sys.stderr))
    return 0
