"""`minigpt bench`: how fast training, sampling and evaluation run, measured honestly.

Every figure is a median over repeated timings after a warm-up. Model FLOPs utilisation
(MFU) is the model's training FLOPs per second (6N + 12·L·C·T per token, as in the PaLM
paper and nanoGPT) over the peak this machine reaches on one large matrix product in the
same dtype, which the bench measures itself. With `--vs hf` the same shapes run in
Hugging Face `GPT2LMHeadModel` (SDPA attention, no dropout) in the same process, the two
timed alternately so that background load hits both alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .version import __version__
from .config import ModelConfig, RunConfig, merge, preset
from .errors import MiniGPTError
from .generation import generate
from .files import atomic_write_json
from .inference import Int8Linear, sampling_model
from .model import GPT
from .runtime import autocast, autocast_dtype, resolve_device
from .training import make_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of one large n×n by n×n product in `dtype` (the best of `reps`)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·C·T for attention scores."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * cfg.block_size


@dataclass
class Contender:
    """One model under test with the three things the bench times."""

    name: str
    train_step: Callable[[torch.Tensor], None]
    forward: Callable[[torch.Tensor], None]
    generate: Callable[[torch.Tensor, int, bool], torch.Tensor]


def _contender(name: str, loss_of: Callable[[torch.Tensor], torch.Tensor],
               opt: torch.optim.Optimizer, amp: torch.dtype | None, device: torch.device,
               gen: Callable[[torch.Tensor, int, bool], torch.Tensor]) -> Contender:
    """A training step and a forward pass built the same way for every contender."""

    def train_step(x: torch.Tensor) -> None:
        with autocast(device, amp):
            loss = loss_of(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> None:
        with autocast(device, amp):
            loss_of(x)

    return Contender(name, train_step, forward, gen)


def ours(cfg: RunConfig, device: torch.device) -> tuple[Contender, GPT]:
    model = GPT(cfg.model, seed=0).to(device)
    opt = make_optimizer(model, cfg.train, device)
    fwd_model = torch.compile(model) if cfg.train.compile == "on" else model
    model.train()
    return _contender("minigpt", lambda x: fwd_model(x, x)[1], opt,
                      autocast_dtype(cfg.train, device), device, _no_gen), model


def _no_gen(x: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
    return x


def _no_step(x: torch.Tensor) -> None:
    return None


# the sampler rows: weights as `minigpt sample --dtype D [--quantize int8]` uses them
SAMPLERS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("auto", "int8")}


def samplers(model: GPT) -> tuple[list[Contender], list[Contender], dict[str, str]]:
    """A generation contender per sampler row, and its weight-streaming limit.

    The limit runs the sampler's own linear layers (the same weights and kernels) one
    after the other on a (B, d) input and nothing else: the speed of a decoder that spent
    no time outside its matrix products. Both are timed alternately with the other rows.
    """
    rows, limits, what = [], [], {}
    for name, (dtype, quantize) in SAMPLERS.items():
        m, info = sampling_model(model, dtype, quantize)
        what[name] = info.describe()

        def gen(x: torch.Tensor, n: int, use_cache: bool, dtype: str = dtype,
                quantize: str | None = quantize) -> torch.Tensor:
            return generate(model, x, n, temperature=0, use_cache=use_cache, dtype=dtype,
                            quantize=quantize)

        rows.append(Contender(name, _no_step, _no_step, gen))
        limits.append(Contender(f"{name}_limit", _no_step, _no_step, _linear_chain(m)))
    return rows, limits, what


def _linear_chain(model: torch.nn.Module) -> Callable[[torch.Tensor, int, bool], torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    w = model.tok_emb.weight

    @torch.no_grad()
    def chain(x: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
        B = x.shape[0]
        inputs = {m.in_features: torch.randn(B, m.in_features, device=w.device, dtype=w.dtype)
                  for m in layers}  # (B, d_in) per width
        for _ in range(n):
            for m in layers:
                m(inputs[m.in_features])
        return x

    return chain


def hugging_face(cfg: RunConfig, device: torch.device, n_positions: int) -> Contender:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise MiniGPTError("--vs hf needs transformers: pip install 'minigpt[hf]'.") from None
    m = cfg.model
    hf_cfg = GPT2Config(vocab_size=m.vocab_size, n_positions=n_positions, n_embd=m.d_model,
                        n_layer=m.n_layer, n_head=m.n_head, n_inner=m.d_ff, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=m.layer_norm_eps,
                        activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg).to(device)
    model.config.pad_token_id = 0
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                            betas=(cfg.train.beta1, cfg.train.beta2))

    @torch.no_grad()
    def gen(x: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
        return model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              use_cache=use_cache, pad_token_id=0,
                              attention_mask=torch.ones_like(x))

    model.train()
    return _contender("hf", lambda x: model(input_ids=x, labels=x).loss, opt,
                      autocast_dtype(cfg.train, device), device, gen)


def _median_rates(contenders: list[Contender], fn_name: str, make_args: Callable[[], tuple],
                  work: float, warmup: int, reps: int, device: torch.device
                  ) -> dict[str, float]:
    """Alternate the contenders rep by rep; return work/second medians per contender."""
    for c in contenders:
        for _ in range(warmup):
            getattr(c, fn_name)(*make_args())
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(reps):
        for c in contenders:
            args = make_args()
            fn = getattr(c, fn_name)
            times[c.name].append(timed(lambda fn=fn, args=args: fn(*args), device))
    return {name: work / statistics.median(ts) for name, ts in times.items()}


def run_bench(preset_name: str = "small", *, vs_hf: bool = False, device_name: str = "auto",
              dtype: str = "auto", compile_mode: str = "off", batch_size: int | None = None,
              vocab_size: int | None = None, gen_tokens: int = 256, reps: int = 7,
              threads: int | None = None, sampling_only: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    cfg = _bench_config(preset_name, dtype, compile_mode, device_name, batch_size, vocab_size,
                        gen_tokens, reps, threads)
    device = resolve_device(device_name)
    torch.manual_seed(0)
    m, tc = cfg.model, cfg.train
    dt = autocast_dtype(tc, device) or torch.float32
    log(f"minigpt bench: preset {preset_name} ({m.n_layer} layers, {m.n_head} heads, "
        f"{m.d_model} wide, context {m.block_size}, vocab {m.vocab_size}, batch "
        f"{tc.batch_size}) on {device.type}, {str(dt).replace('torch.', '')}, "
        f"{torch.get_num_threads()} threads, compile {compile_mode}"
        f"{', sampling only' if sampling_only else ''}")
    mine, model = ours(cfg, device)
    if not model.pos.extrapolates:  # stay inside the trained context: no sliding window
        gen_tokens = min(gen_tokens, m.block_size - 1)
    hf = hugging_face(cfg, device, m.block_size) if vs_hf else None
    g = torch.Generator().manual_seed(0)

    def batch(b: int, t: int) -> Callable[[], tuple]:
        return lambda: (torch.randint(0, m.vocab_size, (b, t), generator=g).to(device),)

    res: dict[str, Any] = {"schema": "minigpt-bench/2", "preset": preset_name,
                           "shapes": {"n_layer": m.n_layer, "n_head": m.n_head,
                                      "d_model": m.d_model, "block_size": m.block_size,
                                      "vocab_size": m.vocab_size, "batch_size": tc.batch_size},
                           "device": device.type, "dtype": str(dt).replace("torch.", ""),
                           "threads": torch.get_num_threads(), "compile": compile_mode,
                           "reps": reps, "sampling_only": sampling_only,
                           "versions": {"minigpt": __version__, "torch": torch.__version__,
                                        "python": platform.python_version()}}
    if not sampling_only:
        res |= _training_rows([mine] + ([hf] if hf else []), model, batch, cfg, device, dt,
                              reps)
    model.eval()
    res |= _generation_rows(model, hf, batch, gen_tokens, reps, sampling_only, device)
    if hf:
        res["ratio_vs_hf"] = _ratios_vs_hf(res, sampling_only)
    return res


# the char vocabulary of the embedded corpus (its training plays' characters and <pad>), as
# `minigpt train --data shakespeare` builds it; tests/test_bench.py holds the two together
SHAKESPEARE_CHAR_VOCAB = 77


def _bench_config(preset_name: str, dtype: str, compile_mode: str, device_name: str,
                  batch_size: int | None, vocab_size: int | None, gen_tokens: int, reps: int,
                  threads: int | None) -> Any:
    """The checked settings of a bench run as a RunConfig (and the thread count applied)."""
    if threads is not None:
        if threads < 1:
            raise MiniGPTError(f"--threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    base = preset(preset_name)
    if vocab_size is None:  # the preset's own vocabulary: GPT-2's 50257 BPE ids, else chars
        vocab_size = (base.train.vocab_size_bpe if base.train.tokenizer == "bpe"
                      else SHAKESPEARE_CHAR_VOCAB)
    if vocab_size < 1:
        raise MiniGPTError(f"--vocab-size must be at least 1, got {vocab_size}.")
    if gen_tokens < 1 or reps < 1:
        raise MiniGPTError("--gen-tokens and --reps must be at least 1.")
    train_o: dict[str, Any] = {"dtype": dtype, "compile": compile_mode, "device": device_name}
    if batch_size is not None:
        train_o["batch_size"] = batch_size
    return merge(base, {"vocab_size": vocab_size, "dropout": 0.0}, train_o, where="bench")


def _training_rows(contenders: list, model: Any, batch: Callable, cfg: Any, device: Any,
                   dt: torch.dtype, reps: int) -> dict[str, Any]:
    """Training and evaluation tokens/s of every contender, and training MFU."""
    m, B = cfg.model, cfg.train.batch_size
    T = m.block_size
    peak = matmul_peak(device, dt)
    train = _median_rates(contenders, "train_step", batch(B, T), B * T, 2, reps, device)
    fpt = flops_per_token(m, model.num_params() - model.pos.num_params())
    return {"peak_flops": peak, "train_tokens_per_s": train,
            "train_mfu": {k: v * fpt / peak for k, v in train.items()},
            "eval_tokens_per_s": _median_rates(contenders, "forward", batch(B, T), B * T, 1,
                                               reps, device)}


def _generation_rows(model: Any, hf: Any, batch: Callable, gen_tokens: int, reps: int,
                     sampling_only: bool, device: Any) -> dict[str, Any]:
    """Generation tokens/s of every sampler (and HF), each against the weight-streaming
    limit of its own weights."""
    rows, limits, what = samplers(model)
    default = sampling_model(model, "auto")[1]  # the format `auto` measured fastest here
    choice = default.choice
    gen_reps = max(1, min(3, reps))
    others = [hf] if hf else []
    out: dict[str, Any] = {
        "samplers": {**what, **({"hf": "Hugging Face GPT2LMHeadModel.generate, float32"}
                                if hf else {})},
        "default_sampler": "int8" if default.quantize else default.format,
        "weights_choice": {"default": default.format, "ms_per_token": choice.ms,
                           "cached": choice.cached,
                           "file": str(choice.path) if choice.path else None},
        "generate_tokens_per_s": {}, "generate_reps": gen_reps}
    for b in (1, 8):
        for use_cache in (True, False) if not sampling_only else (True,):
            n = gen_tokens if use_cache else min(gen_tokens, 64)
            key = f"batch{b}_{'cache' if use_cache else 'nocache'}"
            rates = _median_rates(
                rows + others + (limits if use_cache else []), "generate",
                lambda b=b, n=n, c=use_cache: (*batch(b, 1)(), n, c),
                b * n, 1, gen_reps, device)
            out["generate_tokens_per_s"][key] = {"new_tokens": n, **rates}
            if use_cache:  # every sampler row against the limit of its own weights
                out["generate_tokens_per_s"][key]["percent_of_limit"] = {
                    r: 100 * rates[r] / rates[f"{_limit_of(r)}_limit"]
                    for r in rates if not r.endswith("_limit")}
    return out


def _ratios_vs_hf(res: dict[str, Any], sampling_only: bool) -> dict[str, float]:
    ratios: dict[str, float] = {}
    if not sampling_only:
        for k in ("train", "eval"):
            rates = res[f"{k}_tokens_per_s"]
            ratios[k] = rates["minigpt"] / rates["hf"]
    for k, v in res["generate_tokens_per_s"].items():
        for r in SAMPLERS:
            ratios[f"{k}_{r}"] = v[r] / v["hf"]
        ratios[f"{k}_default"] = v[res["default_sampler"]] / v["hf"]
    return ratios


def _limit_of(row: str) -> str:
    """Which weights a row streams: HF runs the float32 weights."""
    return "fp32" if row == "hf" else row


def format_table(res: dict[str, Any]) -> str:
    has_hf = "ratio_vs_hf" in res
    lines = []
    if "train_tokens_per_s" in res:
        names = ["minigpt"] + (["hf"] if has_hf else [])
        head = f"{'measure':34s}" + "".join(f"{n:>14s}" for n in names)
        if has_hf:
            head += f"{'ratio':>10s}"
        lines += [head, "-" * len(head)]

        def row(label: str, vals: dict[str, float], ratio: float | None,
                fmt: str = "{:,.0f}") -> None:
            line = f"{label:34s}" + "".join(f"{fmt.format(vals[n]):>14s}" for n in names)
            if ratio is not None:
                line += f"{ratio:>9.2f}x"
            lines.append(line)

        r = res.get("ratio_vs_hf", {})
        row("train tokens/s", res["train_tokens_per_s"], r.get("train"))
        row("train MFU", res["train_mfu"], None, "{:.1%}")
        row("eval tokens/s", res["eval_tokens_per_s"], r.get("eval"))
        lines.append("")
    head = (f"{'generate (greedy)':22s}{'sampler':>8s}{'tok/s':>10s}{'limit':>10s}"
            f"{'% limit':>9s}" + (f"{'vs hf':>8s}" if has_hf else ""))
    lines += [head, "-" * len(head)]
    r = res.get("ratio_vs_hf", {})
    for k, v in res["generate_tokens_per_s"].items():
        label = f"{k} ({v['new_tokens']} new)"
        for name in [*SAMPLERS, *(["hf"] if has_hf else [])]:
            mark = "*" if name == res["default_sampler"] else " "
            pct = v.get("percent_of_limit", {}).get(name)
            lim = v.get(f"{_limit_of(name)}_limit")
            line = (f"{label:22s}{name + mark:>8s}{v[name]:>10,.0f}"
                    f"{(f'{lim:,.0f}' if lim else '-'):>10s}"
                    f"{(f'{pct:.0f}%' if pct is not None else '-'):>9s}")
            if has_hf and name != "hf":
                line += f"{r[f'{k}_{name}']:>7.2f}x"
            lines.append(line)
            label = ""
    lines.append("* the default (`--dtype auto`); limit: the same weights' matrix products "
                 "alone, tok/s")
    wc = res.get("weights_choice")
    if wc:
        figures = ", ".join(f"{n} {v:.3g}" for n, v in sorted(wc["ms_per_token"].items(),
                                                             key=lambda kv: kv[1]))
        lines.append(f"  auto chose {wc['default']}: matrix products per token at batch 1, "
                     f"{figures} ms ({'cached' if wc['cached'] else 'measured now'})")
    for name, desc in res["samplers"].items():
        lines.append(f"  {name}: {desc}")
    tail = (f"{res['threads']} threads; medians of {res['reps']} alternating timings "
            f"({res['generate_reps']} for generation)")
    if "peak_flops" in res:
        tail = f"matmul peak ({res['dtype']}): {res['peak_flops'] / 1e9:,.0f} GFLOP/s; " + tail
    lines.append(tail)
    return "\n".join(lines)


def bench(out: str | Path | None = "bench.json", **kwargs: Any) -> dict[str, Any]:
    res = run_bench(**kwargs)
    if out:
        atomic_write_json(Path(out), res)
    return res
