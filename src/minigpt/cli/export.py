"""`minigpt export`: write a checkpoint as a Hugging Face transformers model directory."""

from __future__ import annotations

import argparse

from .options import add_extension_flags, add_which_flag, extension


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to Hugging Face transformers",
        description="Export a checkpoint as a transformers model directory: a 'learned' model "
                    "becomes GPT2LMHeadModel, a 'rope' model GPTNeoXForCausalLM, with its "
                    "tokenizer; the logits are checked to match. Needs minigpt[hf].")
    p.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint directory")
    p.add_argument("--to", choices=["hf"], default="hf",
                   help="target format: hf, a transformers model directory (default: hf)")
    p.add_argument("--out", required=True, metavar="PATH", help="directory to write")
    add_which_flag(p)
    add_extension_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..hf import export_hf

    r = export_hf(args.ckpt, args.out, which=args.which, extension=extension(args))
    print(f"exported {args.ckpt} as {r.architecture} to {r.out} (largest logit difference "
          f"{r.max_abs_diff:.1e}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(r.out)!r})")
    if r.note:
        print(r.note)
    return 0
