"""The weights a model samples with: a dtype (`auto`, float32, bfloat16) and optional int8.

Batch-1 decoding reads every weight once per token, so its speed is set by how many bytes
the weights take and how fast the matrix-vector kernels stream them. `auto` takes the format
(fp32, bf16, int8 with bf16 or fp32 activations; with `quantize="int8"` only the int8 ones)
whose matrix products measure fastest on this machine at these shapes (`weights_choice`:
measured once, cached). `quantize="int8"` stores every linear layer's weight as int8 with
one scale per output channel (symmetric, absmax / 127) and multiplies with PyTorch's own
weight-only int8 kernel, `torch._weight_int8pack_mm`; the token embedding stays in the
sampling dtype.

The user's model is never changed: `sampling_model` returns a converted copy, built once
and kept on the model until its weights change (a training step, `load_state_dict`, a
move to another device), so repeated `generate()` calls pay for the conversion once.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, Dtype, Quantize
from .errors import MiniGPTError
from .weights_choice import FORMATS, Choice, choose, format_name

DTYPES = typing.get_args(Dtype)
QUANTIZE = typing.get_args(Quantize)
INT8_KERNEL = "torch._weight_int8pack_mm"
INT8_FALLBACK = "dequantize + matmul"


def sampling_format(cfg: ModelConfig, device: torch.device, dtype: str = "auto",
                    quantize: str | None = None
                    ) -> tuple[torch.dtype, str | None, Choice | None]:
    """(dtype, quantize) as asked -> the (dtype, quantize) to sample with, and the measured
    figures it was chosen by (measured for `auto` and for int8, to warn when int8 is slow)."""
    if dtype not in DTYPES:
        raise MiniGPTError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    quantize = check_quantize(quantize)
    choice = choose(cfg, device) if dtype == "auto" or quantize else None
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype], quantize, choice
    pool = [n for n, (_, q) in FORMATS.items() if quantize is None or q == quantize]
    if not any(n in choice.ms for n in pool):  # no int8 kernel here: the fallback, faster dtype
        pool = ["fp32", "bf16"]
    target, q = FORMATS[choice.fastest(pool)]
    return target, quantize or q, choice


def check_quantize(quantize: str | None) -> str | None:
    """None / "none" -> None; "int8" stays; anything else is a clear error."""
    if quantize is None or quantize == "none":
        return None
    if quantize not in QUANTIZE:
        raise MiniGPTError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}.")
    return quantize


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 (out, in) and one scale per output channel."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scale", scale.to(dtype))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = INT8_KERNEL if _has_int8_kernel(q.device, dtype) else INT8_FALLBACK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (..., in) -> (N, in)
        if self.kernel == INT8_KERNEL:
            y = torch._weight_int8pack_mm(x2, self.weight, self.scale)  # (N, out)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer multiplies by: (out, in) in float32."""
        return self.weight.float() * self.scale.float()[:, None]


_KERNEL_OK: dict[tuple[str, torch.dtype], bool] = {}


def _has_int8_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._weight_int8pack_mm runs here (CPU has it; other devices vary)."""
    key = (device.type, dtype)
    if key not in _KERNEL_OK:
        try:
            x = torch.ones(1, 64, device=device, dtype=dtype)
            w = torch.ones(8, 64, device=device, dtype=torch.int8)
            torch._weight_int8pack_mm(x, w, torch.ones(8, device=device, dtype=dtype))
            _KERNEL_OK[key] = True
        except (RuntimeError, NotImplementedError, AttributeError):
            _KERNEL_OK[key] = False
    return _KERNEL_OK[key]


@dataclass(frozen=True)
class SamplingInfo:
    """What a sampling model runs in, for the user to read."""

    dtype: torch.dtype
    quantize: str | None
    kernel: str | None  # the int8 kernel, when quantized
    asked: str  # the dtype the caller asked for ("auto", "float32", "bfloat16")
    choice: Choice | None = None  # the measured figures (auto, int8)

    @property
    def format(self) -> str:
        """fp32, bf16, int8 or int8-fp32 (see `weights_choice.FORMATS`)."""
        return format_name(self.dtype, self.quantize)

    def describe(self) -> str:
        """One line: the weights, and for auto the figures they were chosen by."""
        name = str(self.dtype).removeprefix("torch.")
        what = (f"int8 weights ({self.kernel}), {name} activations" if self.quantize
                else f"{name} weights")
        if self.asked == "auto" and self.choice is not None:
            return (f"{what} (auto: fastest here; matrix products per token: "
                    f"{self.choice.figures()})")
        return what + (" (auto)" if self.asked == "auto" else "")

    @property
    def warning(self) -> str | None:
        """One line when int8 was asked for but measures slower here than bf16 weights."""
        ms = self.choice.ms if self.choice else {}
        mine = ms.get(self.format) if self.quantize else None
        if mine is None or "bf16" not in ms or mine <= ms["bf16"]:
            return None
        return (f"warning: int8 weights measure slower here than bfloat16 ({mine:.3g} vs "
                f"{ms['bf16']:.3g} ms of matrix products per token); --dtype auto without "
                "--quantize picks the fastest.")


def sampling_model(model: nn.Module, dtype: str = "auto", quantize: str | None = None
                   ) -> tuple[nn.Module, SamplingInfo]:
    """The model to sample with for (dtype, quantize), and what it runs in.

    Returns `model` itself when nothing needs converting; otherwise a converted copy in
    eval mode, cached on `model` and rebuilt only when its weights change.
    """
    w = model.tok_emb.weight
    target, quantize, choice = sampling_format(model.cfg, w.device, dtype, quantize)
    if quantize is None and w.dtype == target:
        return model, SamplingInfo(target, None, None, dtype, choice)
    stamp = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cache = model.__dict__.get("_sampling_variants")
    if cache is None or cache["stamp"] != stamp:  # first use, or the weights changed
        cache = model.__dict__["_sampling_variants"] = {"stamp": stamp, "models": {}}
    key = (target, quantize)
    if key not in cache["models"]:
        cache["models"][key] = _convert(model, target, quantize)
    variant = cache["models"][key]
    kernel = next((m.kernel for m in variant.modules() if isinstance(m, Int8Linear)), None)
    return variant, SamplingInfo(target, quantize, kernel, dtype, choice)


def _convert(model: nn.Module, dtype: torch.dtype, quantize: str | None) -> nn.Module:
    variants = model.__dict__.pop("_sampling_variants", None)
    try:
        out = copy.deepcopy(model)
    finally:
        if variants is not None:
            model.__dict__["_sampling_variants"] = variants
    out.to(dtype).eval()
    if quantize == "int8":
        quantize_linears(out, dtype)
    return out


def quantize_linears(model: nn.Module, dtype: torch.dtype) -> None:
    """Replace every nn.Linear (the tied LM head included) by an Int8Linear, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child, dtype))
