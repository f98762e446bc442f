"""Validation perplexity of one checkpoint in every sampling variant, against float32.

    python scripts/sampling_quality.py CKPT [CKPT ...] [--windows N] [--out quality.json]

For each checkpoint: the validation split of its own data, tokenized by its own tokenizer,
cut into non-overlapping windows of its block_size (evaluation.eval_span), scored by the
float32 model, by bf16 weights, by int8 weights with bf16 activations (what
`--quantize int8` runs on a CPU with native bf16) and by int8 weights with float32
activations. Prints each perplexity and its difference from float32 in percent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from minigpt.checkpoint import load, read_config
from minigpt.evaluation import eval_span, length_generalization
from minigpt.inference import sampling_model
from minigpt.training import load_dataset

VARIANTS = {"fp32": ("float32", None), "bf16": ("bfloat16", None),
            "int8 (bf16 act.)": ("bfloat16", "int8"), "int8 (fp32 act.)": ("float32", "int8")}


def quality(ckpt: str, windows: int) -> dict:
    cfg, _ = read_config(ckpt)
    model, _, cfg, _ = load(ckpt)
    data = load_dataset(cfg, tokenizer_path=Path(ckpt) / "tokenizer.json")
    L = cfg.model.block_size
    span = eval_span(np.asarray(data.val), [L], windows)
    out = {"ckpt": ckpt, "block_size": L, "tokens": len(span) - 1, "ppl": {}, "seconds": {}}
    for name, (dtype, quantize) in VARIANTS.items():
        t = time.perf_counter()
        m, _ = sampling_model(model, dtype, quantize)
        out["ppl"][name] = length_generalization(m, span, [L])["results"][0]["ppl"]
        out["seconds"][name] = time.perf_counter() - t
    base = out["ppl"]["fp32"]
    out["diff_percent"] = {k: 100 * (v - base) / base for k, v in out["ppl"].items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="+")
    p.add_argument("--windows", type=int, default=64, help="validation windows of block_size")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    args = p.parse_args()
    rows = []
    for ckpt in args.ckpt:
        r = quality(ckpt, args.windows)
        rows.append(r)
        print(f"{ckpt}: {r['tokens']} validation tokens in windows of {r['block_size']}")
        for k, v in r["ppl"].items():
            print(f"  {k:18s} ppl {v:10.4f}  {r['diff_percent'][k]:+.3f} %")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
