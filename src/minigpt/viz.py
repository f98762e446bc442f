"""Pictures of what each positional encoding does, and of the attention it leads to.

    learned, sinusoidal  the position x dimension table, and position-to-position cosine
                         similarity of its rows
    rope                 the query-key score of a fixed vector against relative distance, and
                         the rotation frequency of every dimension pair; with a context-
                         extension method, each pair's wavelength before and after it
    alibi, t5, fire,     the bias each head adds to the attention scores (query x key), and
    kerple               the same bias against distance (trained context L marked)
    nope                 nothing: it adds no positional information
    any checkpoint       with a prompt, the attention weights of every head, one grid per layer
                         ({pos}_attention_layer{i}.png)

Trained encodings (learned, t5, fire) are drawn from a checkpoint; the fixed ones (sinusoidal,
rope, alibi) and kerple (whose initial values are fixed) can also be drawn untrained from a
preset. Everything is written as PNG with the Agg
backend, so no display is needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import positional
from .config import EXTENSION_SETTINGS, VIZ_SETTINGS, ModelConfig, merge, preset
from .errors import MiniGPTError
from .plots import legend_outside, save

# model settings that describe an untrained encoding (and so make no sense with a checkpoint)
OVERRIDES = VIZ_SETTINGS + EXTENSION_SETTINGS
EXTENSION = EXTENSION_SETTINGS  # these also apply to a checkpoint (zero-shot)
DPI = 110
MAX_TICK_LABELS = 48  # prompts up to this many tokens get their tokens as tick labels
OTHER_ROPE_BASES = (100.0, 10_000.0, 500_000.0)


@dataclasses.dataclass
class Source:
    """The encoding to draw and where it came from."""

    pos: str
    module: positional.PositionalEncoding
    cfg: ModelConfig
    label: str  # "checkpoint runs/x (step 200)" or "untrained, preset small"
    model: Any = None  # the GPT, when loaded from a checkpoint
    tokenizer: Any = None


def draw(pos: str | None, ckpt: str | Path | None, out: str | Path, prompt: str | None = None,
         *, preset_name: str | None = None, overrides: dict[str, Any] | None = None,
         which: str = "last", log: Callable[[str], None] | None = None,
         attention_hint: str | None = None) -> list[Path]:
    """Write the pictures of one encoding (and, with `prompt`, attention maps) into `out`.

    `pos` may be None when `ckpt` is given (it is read from the checkpoint). Without a
    checkpoint the encoding is built untrained from `preset_name` (default "small") with
    `overrides` (any of block_size, n_head, d_model, rope_base). Returns the PNG paths
    written; `log` receives a one-line note when there is nothing to draw, which ends with
    `attention_hint` (default: the command-line flags that draw attention maps instead).
    """
    src = _source(pos, ckpt, preset_name, overrides or {}, which, prompt)
    idx = _encode_prompt(src, prompt) if prompt is not None else None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MiniGPTError(f"--out {out} is a file; give a directory for the pictures.")
    out.mkdir(parents=True, exist_ok=True)

    paths: list[Path] = []
    picture = type(src.module).picture  # the encoding says what kind of picture it has
    if picture is not None:
        paths += PICTURES[picture](src, out)
    elif idx is None and log is not None:
        what = ("adds no positional information, so there is nothing of the encoding to draw"
                if type(src.module).where == "nowhere" else "has no picture of its own yet")
        flags = "--prompt TEXT" if src.model is not None else "--ckpt DIR --prompt TEXT"
        hint = attention_hint or f"give {flags} to see the attention it leads to"
        log(f"{src.pos} {what}; {hint}.")
    if idx is not None:
        paths += _draw_attention(src, idx, prompt or "", out)
    return paths


# --- where the encoding comes from --------------------------------------------------------

def _source(pos: str | None, ckpt: str | Path | None, preset_name: str | None,
            overrides: dict[str, Any], which: str, prompt: str | None) -> Source:
    if pos is not None and pos not in positional.REGISTRY:
        raise MiniGPTError(f"unknown positional encoding {pos!r}; choose one of "
                           f"{', '.join(positional.REGISTRY)}.")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(OVERRIDES))
    if unknown:
        raise MiniGPTError(f"viz cannot override {', '.join(unknown)}; only "
                           f"{', '.join(OVERRIDES)} apply to an untrained encoding.")

    if ckpt is not None:
        from .checkpoint import load

        ext = {k: given.pop(k) for k in EXTENSION if k in given}
        if preset_name is not None:
            given = {"preset": preset_name, **given}
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            one = len(given) == 1
            raise MiniGPTError(f"{flags} {'applies' if one else 'apply'} only to an untrained "
                               f"encoding, not to a checkpoint; drop {'it' if one else 'them'} "
                               "or drop --ckpt.")
        model, tok, cfg, raw = load(ckpt, which=which, extension=ext)
        found = cfg.model.pos
        if pos is not None and pos != found:
            raise MiniGPTError(f"--pos {pos} does not match the checkpoint, which was trained "
                               f"with {found}; drop --pos or pass --pos {found}.")
        step = raw.get("step")
        label = f"checkpoint {_short(str(ckpt))}" + (f" (step {step})" if step is not None else "")
        return Source(found, model.pos, cfg.model, label, model, tok)

    if pos is None:
        raise MiniGPTError("say what to draw: give --pos NAME for an untrained encoding or "
                           "--ckpt DIR for a trained model.")
    if positional.REGISTRY[pos].picture_needs_checkpoint:
        raise MiniGPTError(f"{pos} is a trained encoding, so there is nothing to draw without a "
                           f"checkpoint; give --ckpt DIR of a model trained with --pos {pos}.")
    if prompt is not None:
        raise MiniGPTError("--prompt shows a trained model's attention; give --ckpt DIR too.")
    preset_name = preset_name or "small"
    cfg = merge(preset(preset_name), {**given, "pos": pos}, None, where="command line").model
    label = f"untrained, preset {preset_name}"
    if given:
        label += ", " + ", ".join(f"{k} {_fmt(v)}" for k, v in given.items())
    return Source(pos, positional.build(cfg), cfg, label)


def _encode_prompt(src: Source, prompt: str) -> torch.Tensor:
    tok = src.tokenizer
    tok.check_text(prompt)
    ids = tok.encode(prompt)
    if not ids:
        raise MiniGPTError("--prompt holds no tokens; give some text to look at.")
    L = src.cfg.block_size
    if len(ids) > L and not src.module.extrapolates:
        raise MiniGPTError(f"the prompt is {len(ids)} tokens but {src.pos} positions stop at the "
                           f"trained context of {L}; use a shorter prompt.")
    return torch.tensor([ids], dtype=torch.long)  # (1, T)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --- helpers ------------------------------------------------------------------------------

def _save(fig: plt.Figure, path: Path) -> Path:
    return save(fig, path, dpi=DPI, tight=False)  # the figures here lay themselves out


def _masked_cmap(name: str) -> matplotlib.colors.Colormap:
    return plt.get_cmap(name).with_extremes(bad="#d9d9d9")  # grey: the masked future


def _causal(m: np.ndarray) -> np.ndarray:
    """(..., Tq, Tk) with the future (key after query) set to NaN, drawn grey."""
    m = m.astype(np.float64, copy=True)
    Tq, Tk = m.shape[-2:]
    m[..., np.triu(np.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)] = np.nan
    return m


def _grid(n: int, panel: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size = (max(panel * cols + 1.2, 8.0), panel * rows + 1.0)  # wide enough for the title
    fig, axes = plt.subplots(rows, cols, figsize=size,
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


# --- learned and sinusoidal: the table ----------------------------------------------------

def _draw_table(src: Source, out: Path) -> list[Path]:
    n = src.cfg.block_size
    with torch.no_grad():
        table = src.module.table(n).float().cpu()  # (T, C)
    name = src.pos

    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    vmax = float(table.abs().max()) or 1.0
    im = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label=src.module.table_label())
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("position")
    ax.set_title(f"{name} position vectors ({n} x {table.shape[1]})\n{src.label}")
    paths = [_save(fig, out / f"{name}_table.png")]

    unit = table / table.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = (unit @ unit.T).numpy()  # (T, T)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    ax.set_title(f"{name}: cosine similarity between position vectors\n{src.label}")
    paths.append(_save(fig, out / f"{name}_similarity.png"))
    return paths


# --- rope: score against distance, and frequencies ----------------------------------------

def rope_scores(module: positional.PositionalEncoding, q: torch.Tensor, max_dist: int
                ) -> torch.Tensor:
    """Cosine of query and key when both are the vector q (S, hs), the key d tokens earlier.

    Uses the module's own rotate hook: the query sits at position max_dist and keys at every
    position before it. Returns (S, max_dist + 1), column d = distance d.
    """
    S, hs = q.shape
    n = max_dist + 1
    pos = torch.arange(n)
    x = q[:, None, None, :].expand(S, 1, n, hs)  # (S, 1, n, hs): same vector at every position
    module.prepare(n, pos.device)
    with torch.no_grad():
        qr, kr = module.rotate(x, x, pos)
    score = (kr[:, 0] * qr[:, 0, -1:, :]).sum(-1)  # (S, n): query at max_dist, key at j
    score = score / (q * q).sum(-1, keepdim=True)
    return score.flip(-1)  # column j -> distance max_dist - j


def _rope_with_base(cfg: ModelConfig, base: float) -> positional.PositionalEncoding:
    return positional.build(dataclasses.replace(cfg, rope_base=base, pos="rope"))


def _draw_rope(src: Source, out: Path) -> list[Path]:
    cfg, hs, L = src.cfg, src.cfg.head_size, src.cfg.block_size
    max_dist = min(max(4 * L, 64), 8192)
    d = np.arange(max_dist + 1)
    base = cfg.rope_base

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 8), layout="constrained", sharex=True)
    ones = rope_scores(src.module, torch.ones(1, hs), max_dist)[0].numpy()
    g = torch.Generator().manual_seed(0)
    rand = rope_scores(src.module, torch.randn(32, hs, generator=g), max_dist).numpy()
    mean, sd = rand.mean(0), rand.std(0)
    ax1.plot(d, ones, lw=1.2, label="all-ones vector")
    ax1.plot(d, mean, lw=1.2, label="random vectors (mean of 32)")
    ax1.fill_between(d, mean - sd, mean + sd, alpha=0.25, color="C1", label="± 1 s.d.")
    ax1.set_ylabel("score / score at distance 0")
    ax1.set_title(f"rope: query-key score of the same vector against distance (base {base:g})"
                  f"\n{src.label}")
    for b in sorted({*OTHER_ROPE_BASES, base}):
        s = rope_scores(_rope_with_base(cfg, b), torch.ones(1, hs), max_dist)[0].numpy()
        ax2.plot(d, s, lw=2 if b == base else 1, label=f"base {b:g}" + (" (this model)"
                                                                        if b == base else ""))
    ax2.set_ylabel("score / score at distance 0")
    ax2.set_xlabel("distance between query and key (tokens)")
    ax2.set_title(f"all-ones vector, head size {hs}, for several bases")
    for ax in (ax1, ax2):
        ax.axvline(L, color="k", ls="--", lw=0.8, label=f"trained context {L}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        legend_outside(ax, fontsize=8)
    paths = [_save(fig, out / "rope_distance.png")]

    inv_freq = src.module.inv_freq.detach().double().cpu().numpy()  # (hs/2,)
    i = np.arange(len(inv_freq))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained",
                                   gridspec_kw={"width_ratios": [1, 1.2]})
    ax1.semilogy(i, inv_freq, "o-", ms=3, label=r"$\theta_i = base^{-2i/hs}$")
    ax1.axhline(2 * math.pi / L, color="k", ls="--", lw=0.8,
                label=f"one full turn over {L} tokens")
    ax1.set_xlabel(f"dimension pair i (pairs (i, i + {hs // 2}))")
    ax1.set_ylabel("rotation per token (radians, log scale)")
    ax1.set_title(f"rope: rotation frequencies, base {base:g}, head size {hs}")
    ax1.grid(alpha=0.3, which="both")
    legend_outside(ax1, fontsize=8)
    angle = np.outer(np.arange(L), inv_freq)  # (T, hs/2)
    im = ax2.imshow(np.cos(angle), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                    interpolation="nearest")
    fig.colorbar(im, ax=ax2, label=r"cos(position $\cdot\ \theta_i$)")
    ax2.set_xlabel("dimension pair i")
    ax2.set_ylabel("position")
    ax2.set_title(f"rotation angle per position\n{src.label}")
    paths.append(_save(fig, out / "rope_frequencies.png"))
    if cfg.rope_scaling != "none":
        paths.append(_draw_rope_extension(src, out))
    return paths


def _draw_rope_extension(src: Source, out: Path) -> Path:
    """Wavelength (tokens per full turn) of every dimension pair with plain RoPE and with the
    context-extension method, the trained length and the length aimed at marked."""
    cfg = src.cfg
    L, s, method = cfg.rope_original_length, cfg.rope_factor, cfg.rope_scaling
    plain = dataclasses.replace(cfg, rope_scaling="none", rope_factor=1.0)
    before = positional.rope_frequencies(plain)[0].double().numpy()
    target = round(s * L)
    after, attn = positional.rope_frequencies(cfg, target)  # dynamic: at s x L tokens
    after = after.double().numpy()
    i = np.arange(len(before))
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    ax.semilogy(i, 2 * math.pi / before, "o-", ms=3, label="plain RoPE (before)")
    at = f" at {target} tokens" if method == "dynamic" else ""
    ax.semilogy(i, 2 * math.pi / after, "s-", ms=3,
                label=f"{method}, factor {s:g}{at} (after)")
    ax.axhline(L, color="k", ls="--", lw=0.8, label=f"trained length L = {L}")
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"aimed-at length {s:g} x L = {target}")
    ax.set_xlabel(f"dimension pair i (pairs (i, i + {cfg.head_size // 2}))")
    ax.set_ylabel("wavelength 2π/θ_i (tokens per full turn, log scale)")
    note = f"; q and k times {attn:.3f}" if attn != 1.0 else ""
    ax.set_title(f"rope context extension: {method}, factor {s:g}{note}\n"
                 f"{positional.ROPE_PAPERS[method]}\n{src.label}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, out / "rope_extension.png")


# --- alibi and t5: the score bias ---------------------------------------------------------

def _draw_bias(src: Source, out: Path) -> list[Path]:
    name, L, nh = src.pos, src.cfg.block_size, src.cfg.n_head
    p = torch.arange(L)
    with torch.no_grad():
        bias = _causal(src.module.bias(p, p).float().cpu().numpy())  # (nh, T, T)
    slopes = getattr(src.module, "slopes", None)

    fig, axes = _grid(nh)
    lo, hi = float(np.nanmin(bias)), float(np.nanmax(bias))
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    cmap = _masked_cmap("viridis")
    for h, ax in enumerate(axes.flat[:nh]):
        im = ax.imshow(bias[h], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"head {h}" + (f", slope {float(slopes[h]):.3g}" if slopes is not None
                                    else ""), fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(im, ax=axes, label="bias added to the attention score", shrink=0.8)
    fig.suptitle(f"{name}: attention-score bias per head (grey: masked future)\n{src.label}")
    paths = [_save(fig, out / f"{name}_bias.png")]

    far = 2 * L
    reach = src.module.bias_reach()  # past this distance the bias no longer changes
    if reach is not None:
        far = max(far, math.ceil(1.25 * reach))
    far = min(far, 8192)
    with torch.no_grad():
        row = src.module.bias(torch.tensor([far]), torch.arange(far + 1)).float().cpu()
    by_dist = row[:, 0, :].flip(-1).numpy()  # (nh, far + 1), column d = distance d
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    d = np.arange(far + 1)
    for h in range(nh):
        lab = f"head {h}" + (f" (slope {float(slopes[h]):.3g})" if slopes is not None else "")
        ax.plot(d, by_dist[h], lw=1.2, label=lab)
    ax.axvline(L, color="k", ls="--", lw=0.8, label=f"trained context {L}")
    if reach is not None:
        ax.axvline(reach, color="grey", ls=":", lw=0.8, label=f"bias constant past {reach}")
    ax.set_xlabel("distance from query back to key (tokens)")
    ax.set_ylabel("bias added to the attention score")
    ax.set_title(f"{name}: bias against distance, per head (query at position {far})"
                 f"\n{src.label}")
    ax.grid(alpha=0.3)
    if nh <= 16:
        legend_outside(ax, fontsize=7, ncol=2 if nh > 8 else 1)
    paths.append(_save(fig, out / f"{name}_bias_distance.png"))
    return paths


# --- attention maps of a checkpoint on a prompt -------------------------------------------

def _token_labels(tok: Any, ids: list[int]) -> list[str]:
    out = []
    for i in ids:
        s = tok.decode([i])
        s = s.replace("\n", "\\n").replace("\t", "\\t")
        out.append("␣" if s == " " else s[:8] or "·")
    return out


def _draw_attention(src: Source, idx: torch.Tensor, prompt: str, out: Path) -> list[Path]:
    maps = src.model.attention_maps(idx)  # n_layer x (1, nh, T, T)
    ids = idx[0].tolist()
    T, nh = len(ids), src.cfg.n_head
    labels = _token_labels(src.tokenizer, ids) if T <= MAX_TICK_LABELS else None
    shown = prompt.replace("\n", "\\n")
    shown = shown if len(shown) <= 32 else shown[:31] + "…"
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)  # small weights stay visible
    L = src.cfg.block_size
    cmap = _masked_cmap("magma")
    paths = []
    for layer, att in enumerate(maps):
        a = _causal(att[0].float().cpu().numpy())  # (nh, T, T)
        fig, axes = _grid(nh, panel=3.6 if labels else 3.2)
        for h, ax in enumerate(axes.flat[:nh]):
            im = ax.imshow(a[h], cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=9)
            ax.set_xlabel("key (attended to)")
            ax.set_ylabel("query (attending)")
            if T > L:  # queries past the trained context
                ax.axhline(L - 0.5, color="C0", ls="--", lw=0.8)
            if labels:
                fs = 7 if T <= 24 else 5
                ax.set_xticks(range(T), labels, rotation=90, fontsize=fs)
                ax.set_yticks(range(T), labels, fontsize=fs)
        fig.colorbar(im, ax=axes, label="attention weight (square-root colour scale)",
                     shrink=0.8)
        past = f"; dashed: trained context {L}" if T > L else ""
        fig.suptitle(f"{src.pos}: attention weights of layer {layer} (layers 0-{len(maps) - 1})\n"
                     f"prompt “{shown}” ({T} tokens{past})\n{src.label}")
        paths.append(_save(fig, out / f"{src.pos}_attention_layer{layer}.png"))
    return paths


PICTURES: dict[str, Callable[[Source, Path], list[Path]]] = {
    "table": _draw_table, "rotary": _draw_rope, "bias": _draw_bias}
