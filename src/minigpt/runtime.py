"""Where and how the work runs: the device, the autocast dtype, and this process's place in a
torchrun job. Every room asks here, so each decision is made one way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import TrainConfig
from .errors import MiniGPTError, arg


# --- devices and precision ------------------------------------------------------------------

def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA, then Apple's MPS, then the CPU; a named device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MiniGPTError(f"device {name} was asked for but CUDA is not available here; "
                           f"set {arg('device')} to cpu or auto.")
    if name == "mps" and not _mps_available():
        raise MiniGPTError("device mps was asked for but is not available here; set "
                           f"{arg('device')} to cpu.")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 matrices natively, at about twice the fp32
    rate, instead of emulating them."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def autocast_dtype(tc: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: `auto` picks bf16 where the hardware computes it natively (CUDA GPUs
    that support it, CPUs with bf16 matrix instructions), which keeps the loss per step and
    halves the bytes moved; fp32 elsewhere, where bf16 would be emulated and slower."""
    if tc.dtype == "float32":
        return None
    if tc.dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing for fp32 (`dtype` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def should_compile(tc: TrainConfig, device: torch.device, steps_left: int) -> bool:
    """`--compile auto`: compile where it pays off. On CUDA GPUs compiling fuses the many small
    kernels of a step, worth its start-up cost for runs of 1000+ steps; a CPU step is already
    dominated by a few large matrix products, so compiling gains nothing there for a start-up
    of many seconds (the measured figures are in docs/performance.md)."""
    if tc.compile != "auto":
        return tc.compile == "on"
    return device.type == "cuda" and steps_left >= 1000


# --- processes ------------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when there is no job)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def process_rank() -> int:
    """This process's rank: the process group's once joined, else torchrun's RANK (0 alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job: they train alongside rank 0 but write nothing."""
    return process_rank() == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one: NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def barrier(ranks: Dist) -> None:
    """Wait for every rank (nothing to wait for alone)."""
    if ranks.enabled:
        dist.barrier()


def any_rank(ranks: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (one tiny all-reduce)."""
    if not ranks.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank_rng_states(ranks: Dist) -> list[torch.Tensor] | None:
    """Every rank's CPU RNG state (dropout streams differ per rank), gathered on all ranks."""
    if not ranks.enabled:
        return None
    mine = torch.get_rng_state()
    states = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(states, mine)
    return states


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def cpu_flags() -> str:
    """The CPU features that decide speed here: the widest vector unit and native bf16."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                      if ln.startswith("flags")), []))
    if not flags:
        return "unknown"
    vec = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    names = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
    return f"{vec}, " + (" + ".join(names[f] for f in bf16) + " (native bf16)" if bf16
                         else "no native bf16")
