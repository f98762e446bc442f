"""Which weights sample fastest here: decided by a short measurement, cached, and shown.

Batch-1 decoding reads every weight once per token, so its speed is set by the bytes the
weights take and by how fast this machine's kernels stream them, and that varies: on a CPU
without native bf16 bf16 matrix-vector products still beat float32 (half the bytes), while
PyTorch's int8 kernel can be slower than float32; with AVX512-BF16 it is the other way round
(figures in docs/performance-sampling.md). So `--dtype auto` for sampling does not follow a
rule about the hardware: at first use it times the model's own matrix products (every linear
layer of the model's shapes, at batch 1, in each weights format that runs here) and takes
the fastest. That costs a few milliseconds for small models (about half a second for
GPT-2's 124M), once per machine and shape: the figures are kept in
`<cache>/sampling-weights.json` (`<cache>` is $MINIGPT_CACHE, else $XDG_CACHE_HOME/minigpt,
else ~/.cache/minigpt), keyed by the CPU (model and instruction sets) or GPU, the torch
version and thread count, and the shapes. Delete the file to measure again.

Training's `--dtype auto` (bf16 autocast only where bf16 is native) is a different decision
and stays in `runtime.autocast_dtype`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .errors import MiniGPTError
from .files import atomic_write_json
from .runtime import cpu_name

# name -> (activation/weights dtype, quantize): every format `auto` may choose
FORMATS: dict[str, tuple[torch.dtype, str | None]] = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "int8": (torch.bfloat16, "int8"),  # int8 weights, bf16 activations
    "int8-fp32": (torch.float32, "int8"),  # int8 weights, fp32 activations
}
SCHEMA = "minigpt-sampling-weights/1"
FILE = "sampling-weights.json"


def cache_dir() -> Path:
    """$MINIGPT_CACHE (also the token cache's), else $XDG_CACHE_HOME/minigpt, else
    ~/.cache/minigpt."""
    if os.environ.get("MINIGPT_CACHE"):
        return Path(os.environ["MINIGPT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "minigpt"
    return Path.home() / ".cache" / "minigpt"


def format_name(dtype: torch.dtype, quantize: str | None) -> str:
    return next(k for k, v in FORMATS.items() if v == (dtype, quantize))


@dataclass(frozen=True)
class Choice:
    """The measured matrix-product time per token of each format, and the fastest."""

    ms: dict[str, float]  # format -> ms per token (every linear layer once, batch 1)
    cached: bool  # read from the cache file rather than measured by this call
    path: Path | None  # where the figures are kept (None: could not be written)

    def fastest(self, names: list[str] | None = None) -> str:
        pool = [n for n in (names or self.ms) if n in self.ms]
        return min(pool, key=self.ms.__getitem__)

    def figures(self) -> str:
        """'int8 0.43, bf16 1.42, fp32 2.52 ms', fastest first."""
        order = sorted(self.ms, key=self.ms.__getitem__)
        return ", ".join(f"{n} {self.ms[n]:.3g}" for n in order) + " ms"


def machine(device: torch.device) -> dict[str, str | int]:
    """What the speed of a kernel depends on, besides the shapes."""
    out: dict[str, str | int] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(i)
        out["gpu"] = f"{torch.cuda.get_device_name(i)} sm{cap[0]}{cap[1]}"
        return out
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        flags = [f for f, check in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                    ("amx", "_is_amx_tile_supported"))
                 if getattr(cpu, check, lambda: False)()]
        out["cpu"] = cpu_name()
        out["isa"] = "+".join([torch.backends.cpu.get_cpu_capability(), *flags])
        out["threads"] = torch.get_num_threads()
    return out


def shapes(cfg: ModelConfig) -> dict[str, int | bool]:
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "d_ff": cfg.d_ff,
            "vocab_size": cfg.vocab_size, "bias": cfg.bias}


def key(cfg: ModelConfig, device: torch.device) -> str:
    return json.dumps({**machine(device), **shapes(cfg)}, sort_keys=True)


_READ: dict[tuple[Path, int, int, str], Choice] = {}  # what this process read, by file version


def choose(cfg: ModelConfig, device: torch.device) -> Choice:
    """The formats' measured times for these shapes here: from the cache, else measured now
    (and stored for next time; a cache that cannot be read or written is measured around)."""
    path = cache_dir() / FILE
    k = key(cfg, device)
    try:
        st = path.stat()
        seen = (path, st.st_mtime_ns, st.st_size, k)
    except OSError:
        seen = None
    if seen in _READ:
        return _READ[seen]
    entries = _read(path)
    hit = entries.get(k)
    if isinstance(hit, dict) and isinstance(hit.get("ms"), dict) and hit["ms"] and all(
            n in FORMATS and isinstance(v, (int, float)) and v > 0 for n, v in hit["ms"].items()):
        _READ[seen] = Choice({n: float(v) for n, v in hit["ms"].items()}, True, path)
        return _READ[seen]
    ms = measure(cfg, device)
    entries[k] = {"ms": ms, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"schema": SCHEMA, "entries": entries})
    except (OSError, MiniGPTError):  # read-only home: measured again next time
        path = None
    return Choice(ms, False, path)


def _read(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return {}
    entries = raw.get("entries")
    return entries if isinstance(entries, dict) else {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _layers(cfg: ModelConfig) -> list[tuple[int, int, bool]]:
    """(out, in, bias) of every linear layer a token passes through, in order."""
    d, f, b = cfg.d_model, cfg.d_ff, cfg.bias
    return [*[(o, i, b) for _ in range(cfg.n_layer)
              for o, i in ((3 * d, d), (d, d), (f, d), (d, f))], (cfg.vocab_size, d, False)]


def _chain(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, quantize: str | None):
    """One token's matrix products in this format, as `inference` computes them: F.linear,
    or torch._weight_int8pack_mm times per-channel scales plus the bias. The weights' values
    do not change the time, so they are constants (no model copy is made)."""
    ops = []
    for o, i, has_bias in _layers(cfg):
        bias = torch.zeros(o, device=device, dtype=dtype) if has_bias else None
        if quantize:
            w = torch.ones(o, i, device=device, dtype=torch.int8)
            scale = torch.full((o,), 0.01, device=device, dtype=dtype)
            ops.append(lambda x, w=w, s=scale, b=bias: torch._weight_int8pack_mm(x, w, s)
                       if b is None else torch._weight_int8pack_mm(x, w, s) + b)
        else:
            w = torch.full((o, i), 0.01, device=device, dtype=dtype)
            ops.append(lambda x, w=w, b=bias: F.linear(x, w, b))
    xs = {i: torch.ones(1, i, device=device, dtype=dtype) for _, i, _ in _layers(cfg)}
    ins = [xs[i] for _, i, _ in _layers(cfg)]

    def run() -> None:
        for op, x in zip(ops, ins):
            op(x)

    return run


@torch.no_grad()
def measure(cfg: ModelConfig, device: torch.device, rounds: int = 20,
            budget_s: float = 0.3) -> dict[str, float]:
    """ms per token of every linear layer at batch 1, for each format whose kernels run here.

    The formats are timed in turn, round after round (so background load falls on all of
    them alike), after one warm-up pass each; a format's figure is its fastest round, since
    load from elsewhere only ever adds time. Stops after `rounds` rounds, or after `budget_s`
    once three are done."""
    runs = {}
    for name, (dtype, quantize) in FORMATS.items():
        try:
            run = _chain(cfg, device, dtype, quantize)
            run()  # warm-up; a kernel that does not run here leaves the format out
            _sync(device)
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            continue
        runs[name] = run
    best = {n: float("inf") for n in runs}
    start = time.perf_counter()
    for r in range(rounds):
        for n, run in runs.items():
            t = time.perf_counter()
            run()
            _sync(device)
            best[n] = min(best[n], time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {n: round(s * 1e3, 4) for n, s in best.items()}
