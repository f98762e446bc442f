"""`minigpt bench`: training, sampling and evaluation speed, optionally against HF GPT-2."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from ..config import Dtype


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure training/sampling/eval speed",
                       description="Measure tokens/s and MFU, and sampling against the "
                       "weight-streaming limit; --vs hf runs HF GPT-2 alongside.")
    p.add_argument("--preset", default="small", metavar="NAME",
                   help="model shapes: tiny, small, shakespeare-char or gpt2 (default: small)")
    p.add_argument("--vs", choices=["hf"], help="also run Hugging Face GPT2LMHeadModel")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=typing.get_args(Dtype),
                   help="autocast dtype, as train --dtype (default: auto)")
    p.add_argument("--compile", default="off", choices=["off", "on"],
                   help="torch.compile the models (default: off)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="training/eval batch (default: the preset's)")
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="vocabulary size of the benchmark models (default: 50257 for gpt2, "
                        "whose tokenizer is BPE; else 77, the embedded shakespeare corpus's chars)")
    p.add_argument("--sampling-only", action="store_true",
                   help="skip the training and evaluation rows and the no-cache generation "
                        "rows (for big shapes such as --preset gpt2)")
    p.add_argument("--gen-tokens", type=int, default=256, metavar="N",
                   help="new tokens per generation (default: 256)")
    p.add_argument("--reps", type=int, metavar="N",
                   help="timed repetitions per measure (default: 7; 20 with --pos-overhead)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: torch's choice)")
    p.add_argument("--pos-overhead", action="store_true",
                   help="instead: time a training step of every positional encoding, "
                        "interleaved in one process at the quick study's shapes, in float32 "
                        "and (where native) bf16 autocast; prints median ms and the ratio to "
                        "nope (--reps rounds, default 20)")
    p.add_argument("--out", default="bench.json", metavar="PATH",
                   help="where to write the JSON results (default: bench.json)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.pos_overhead:
        return pos_overhead(args)
    from ..bench import bench, format_table

    res = bench(args.out, preset_name=args.preset, vs_hf=args.vs == "hf",
                device_name=args.device, dtype=args.dtype, compile_mode=args.compile,
                batch_size=args.batch_size, vocab_size=args.vocab_size,
                gen_tokens=args.gen_tokens, reps=7 if args.reps is None else args.reps,
                threads=args.threads,
                sampling_only=args.sampling_only)
    print(format_table(res))
    print(f"wrote {args.out}")
    return 0


def pos_overhead(args: argparse.Namespace) -> int:
    from ..bench_positions import format_table, run
    from ..files import atomic_write_json

    res = run(device_name=args.device, dtype=args.dtype,
              rounds=20 if args.reps is None else args.reps,
              threads=args.threads)
    print(format_table(res))
    atomic_write_json(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0
