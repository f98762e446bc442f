"""`minigpt bench --pos-overhead`: what each positional encoding adds to a training step.

One model per registered encoding, all built with the same seed at the same shapes (the quick
study's: context 64, 4 layers, 4 heads, 128 wide, batch 16, 65 characters), each trained
with its own AdamW. A round times one full step (forward, backward, AdamW step, zero_grad)
of every model in turn, the order rotating from round to round, so that background load and
warming caches hit every encoding alike; the table gives each encoding's median step, the
spread of its steps (25th-75th percentile) and its median over NoPE's. The rounds run in
every dtype the project trains in here: float32, and bf16 autocast where the device
computes bf16 natively (or where --dtype bfloat16 asks for it).
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch

from . import positional
from .version import __version__
from .bench import timed
from .config import RunConfig, TrainConfig, merge, preset
from .errors import MiniGPTError
from .model import GPT
from .runtime import autocast, autocast_dtype, resolve_device
from .training import make_optimizer

# the quick study's shapes (docs/study.md) and the character vocabulary of shakespeare
SHAPES = dict(block_size=64, n_layer=4, n_head=4, d_model=128, vocab_size=77, dropout=0.0)
BATCH = 16


def dtypes(device: torch.device, dtype: str) -> list[torch.dtype | None]:
    """The autocast dtypes to time (None: float32): `dtype` alone when named, else float32
    and, where `auto` would train in it, bf16."""
    if dtype == "float32":
        return [None]
    if dtype == "bfloat16":
        return [torch.bfloat16]
    native = autocast_dtype(TrainConfig(dtype="auto"), device)
    return [None] + ([native] if native is not None else [])


def _step(cfg: RunConfig, device: torch.device, amp: torch.dtype | None
          ) -> Callable[[torch.Tensor], None]:
    model = GPT(cfg.model, seed=0).to(device)
    model.train()
    opt = make_optimizer(model, cfg.train, device)

    def step(x: torch.Tensor) -> None:
        with autocast(device, amp):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(*, device_name: str = "auto", dtype: str = "auto", rounds: int = 20, warmup: int = 3,
        threads: int | None = None, encodings: list[str] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Median step times per encoding and dtype; see the module docstring."""
    if threads is not None:
        if threads < 1:
            raise MiniGPTError(f"--threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    if rounds < 1:
        raise MiniGPTError(f"--reps must be at least 1, got {rounds}.")
    names = encodings or list(positional.REGISTRY)
    unknown = [n for n in names if n not in positional.REGISTRY]
    if unknown:
        raise MiniGPTError(f"unknown positional encoding {unknown[0]!r}; choose from "
                           f"{', '.join(positional.REGISTRY)}.")
    if "nope" not in names:
        names = ["nope", *names]  # the baseline every ratio is taken against
    device = resolve_device(device_name)
    g = torch.Generator().manual_seed(0)
    res: dict[str, Any] = {
        "schema": "minigpt-pos-overhead/1", "shapes": {**SHAPES, "batch_size": BATCH},
        "device": device.type, "threads": torch.get_num_threads(), "rounds": rounds,
        "machine": f"{platform.processor() or platform.machine()}",
        "versions": {"minigpt": __version__, "torch": torch.__version__}, "dtypes": {}}
    for amp in dtypes(device, dtype):
        label = "bf16 autocast" if amp is not None else "float32"
        log(f"pos overhead: {len(names)} encodings, {label}, {rounds} rounds on {device.type}, "
            f"{torch.get_num_threads()} threads")
        steps = {}
        for n in names:
            cfg = merge(preset("small"), {**SHAPES, "pos": n}, {"batch_size": BATCH},
                        where="bench")
            steps[n] = _step(cfg, device, amp)
        batch = [torch.randint(0, SHAPES["vocab_size"], (BATCH, SHAPES["block_size"]),
                               generator=g).to(device) for _ in range(4)]
        for n in names:
            for i in range(warmup):
                steps[n](batch[i % len(batch)])
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate the start
            x = batch[r % len(batch)]
            for n in order:
                step = steps[n]
                times[n].append(timed(lambda step=step, x=x: step(x), device) * 1e3)
        base = statistics.median(times["nope"])
        rows = {}
        for n, ts in times.items():
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
            med = statistics.median(ts)
            rows[n] = {"median_ms": med, "q1_ms": q[0], "q3_ms": q[2], "ratio": med / base}
        res["dtypes"]["bf16" if amp is not None else "fp32"] = rows
    return res


def format_table(res: dict[str, Any]) -> str:
    lines = []
    for dt, rows in res["dtypes"].items():
        head = f"{'encoding':12s}{'median ms':>11s}{'spread (q1-q3)':>18s}{'vs nope':>9s}"
        lines += [f"training step, {'bf16 autocast' if dt == 'bf16' else 'float32'}:", head,
                  "-" * len(head)]
        for n, r in rows.items():
            spread = f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}"
            lines.append(f"{n:12s}{r['median_ms']:>11.2f}{spread:>18s}{r['ratio']:>8.2f}x")
        lines.append("")
    s = res["shapes"]
    lines.append(f"forward + backward + AdamW, context {s['block_size']}, {s['n_layer']} layers, "
                 f"{s['n_head']} heads, {s['d_model']} wide, batch {s['batch_size']}; "
                 f"{res['device']}, {res['threads']} threads; medians of {res['rounds']} "
                 "interleaved rounds")
    return "\n".join(lines)
