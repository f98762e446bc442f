"""Profile one decode step op by op: where a sampled token's time goes, per weights format.

    python scripts/profile_decode.py [--preset shakespeare-char] [--threads N] [--steps 100]

A randomly initialised model of the preset's shapes (vocabulary 77, the embedded corpus's
characters; `learned` positions, as `minigpt bench`'s models) decodes `--steps` tokens at
batch 1 with the key/value cache (temperature 0.8, 8-token prompt) in fp32, bf16 and int8
weights. First the wall time per token (median of 5 runs, the formats alternated), then
torch.profiler's table per format: operator calls per token (nested calls included) and
self CPU time per token of the costliest operators.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from minigpt.config import merge, preset
from minigpt.generation import Decoding
from minigpt.model import GPT

FORMATS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("auto", "int8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--top", type=int, default=12, help="operators shown per format")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = merge(preset(a.preset), {"vocab_size": 77, "dropout": 0.0}, where="profile").model
    model = GPT(cfg, seed=0).eval()
    x = torch.randint(0, 77, (1, 8), generator=torch.Generator().manual_seed(0))

    def steps(fmt: str, n: int):
        dtype, quantize = FORMATS[fmt]
        it = iter(Decoding(model, x, n + 1, temperature=0.8, dtype=dtype, quantize=quantize,
                           generator=torch.Generator().manual_seed(0)))
        next(it)  # the prompt's pass is not a decode step
        return it

    for fmt in FORMATS:  # warm-up: conversions, kernels, the weights measurement
        for _ in steps(fmt, 10):
            pass
    wall: dict[str, list[float]] = {f: [] for f in FORMATS}
    for _ in range(5):
        for fmt in FORMATS:
            it = steps(fmt, a.steps)
            t = time.perf_counter()
            for _ in it:
                pass
            wall[fmt].append((time.perf_counter() - t) / a.steps * 1e3)
    print(f"{a.preset}: {cfg.n_layer} layers, {cfg.d_model} wide; {torch.get_num_threads()} "
          f"threads; batch 1, KV cache, {a.steps} decode steps")
    for fmt in FORMATS:
        it = steps(fmt, a.steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in it:
                pass
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        calls = sum(e.count for e in ops) / a.steps
        total = sum(e.self_cpu_time_total for e in ops) / a.steps
        w = wall[fmt]
        print(f"\n{fmt}: {statistics.median(w):.3f} ms/token (median of 5, {min(w):.3f}-"
              f"{max(w):.3f}); profiled {total / 1e3:.3f} ms self CPU, {calls:.0f} op calls "
              "per token")
        print(f"  {'operator':52s}{'calls/token':>12s}{'us/token':>10s}")
        for e in ops[:a.top]:
            print(f"  {e.key:52s}{e.count / a.steps:>12g}{e.self_cpu_time_total / a.steps:>10.1f}")
        rest = ops[a.top:]
        print(f"  {f'{len(rest)} others':52s}{sum(e.count for e in rest) / a.steps:>12g}"
              f"{sum(e.self_cpu_time_total for e in rest) / a.steps:>10.1f}")


if __name__ == "__main__":
    main()
