"""`minigpt import`: turn a local Hugging Face GPT-2 / GPT-NeoX directory into a checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="import a local Hugging Face model as a checkpoint",
        description="Convert a local transformers model directory (GPT2LMHeadModel, or a "
                    "GPTNeoXForCausalLM with sequential residual and full rotary) into a "
                    "minigpt checkpoint that `sample` and `train --init-from` accept. Reads "
                    "safetensors only and never downloads.")
    p.add_argument("--from", dest="source_format", choices=["hf"], default="hf",
                   help="source format: hf (default: hf)")
    p.add_argument("src", metavar="PATH", help="local Hugging Face model directory")
    p.add_argument("--out", required=True, metavar="PATH", help="checkpoint directory to create")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..hf import import_hf

    r = import_hf(args.src, args.out)
    print(f"imported {r.architecture} from {args.src} ({r.params:,} parameters, {r.tokenizer} "
          f"tokenizer) to {r.out}")
    return 0
