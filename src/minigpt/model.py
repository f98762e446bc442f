"""A GPT decoder in one readable file (after nanoGPT), with positional encodings plugged in.

token ids -> token embedding -> pos.embed -> n_layer x [LN -> attention -> +, LN -> MLP -> +]
-> LN -> LM head (tied to the token embedding) -> logits.
Attention calls pos.rotate on queries/keys and adds pos.bias to the scores; which encoding
fills those hooks is not this file's business.
"""

from __future__ import annotations

import math
import zlib
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import positional
from .config import IGNORE_INDEX, ModelConfig


class KVCache:
    """Pre-allocated keys and values of every layer: (n_layer, B, nh, max_len, hs)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_size)
        # empty: attention reads only the first `length` positions, all written before
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self._k, self._v = self.k.unbind(0), self.v.unbind(0)  # per-layer views, made once
        self.length = 0  # tokens already stored
        self.max_len = max_len
        self.positions: torch.Tensor | None = None  # (max_len,) with random_positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, nh, T, hs) keys and values after the stored ones; return all of them."""
        start, T = self.length, k.shape[2]
        ck, cv = self._k[layer], self._v[layer]  # (B, nh, max_len, hs)
        ck.narrow(2, start, T).copy_(k)
        cv.narrow(2, start, T).copy_(v)
        return ck.narrow(2, 0, start + T), cv.narrow(2, 0, start + T)


@dataclass
class AttnContext:
    """What every attention layer of one forward pass shares."""

    pos: torch.Tensor  # (T,) absolute positions of the new tokens
    mask: torch.Tensor | None  # additive (1, nh, Tq, Tk) or boolean (Tq, Tk), or None
    is_causal: bool  # let SDPA apply the causal mask itself (fast path)
    rotate: object  # the encoding's rotate hook
    cache: KVCache | None = None

    def mask_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask in the dtype of the scores (additive masks must match the query)."""
        m = self.mask
        if m is not None and m.dtype != torch.bool and m.dtype != dtype:
            m = self.mask = m.to(dtype)  # converted once, shared by the following layers
        return m


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.d_model = cfg.n_head, cfg.d_model
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.capture = False  # when set, keep the attention weights in self.last_attn
        self.last_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, ctx: AttnContext, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs), as views
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(
            2, 0, 3, 1, 4).unbind(0)
        q, k = ctx.rotate(q, k, ctx.pos)
        if ctx.cache is not None:
            k, v = ctx.cache.update(layer, k, v)  # (B, nh, Tk, hs) with Tk = past + T
        fp32_attention = (q.dtype == torch.bfloat16 and q.device.type == "cpu"
                          and (torch.is_grad_enabled() or ctx.cache is not None))
        if fp32_attention:
            # bf16 on a CPU: the matmuls gain, but the CPU flash-attention backward is several
            # times slower in bf16 than in fp32, and so is one query against a cache (figures
            # in docs/performance-sampling.md), so attention runs in fp32 (the cache is kept
            # in fp32 on CPUs, see new_cache)
            q, k, v = q.float(), k.float(), v.float()
        # (leaving an autocast region costs more than the attention of one token: only when on)
        off = fp32_attention and torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False) if off else nullcontext():
            if self.capture:
                y = self._explicit(q, k, v, ctx)
            else:
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=ctx.mask_as(q.dtype), is_causal=ctx.is_causal,
                    dropout_p=self.dropout if self.training else 0.0)
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        y = self.c_proj(y)
        return self.resid_drop(y) if self.training else y  # eval: skip the no-op call

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext
                  ) -> torch.Tensor:
        """The same attention written out, so its weights can be looked at."""
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, Tq, Tk)
        Tq, Tk = att.shape[-2:]
        if ctx.is_causal:
            causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
            att = att.masked_fill(~causal, float("-inf"))
        elif ctx.mask is not None:
            mask = ctx.mask_as(att.dtype)
            att = att.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else att + mask
        att = att.softmax(dim=-1)
        self.last_attn = att.detach()
        return att @ v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))
        return self.drop(y) if self.training else y


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, ctx: AttnContext, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), ctx, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0, init: bool = True) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer).")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = positional.build(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as GPT-2
        if init:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """GPT-2's init, drawn per parameter *name* from its own seeded generator.

        So two models that differ only in their positional encoding start with identical
        values in every parameter they share, whatever the encoding adds or consumes.
        """
        for name, p in self.named_parameters():
            name_seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62
            g = torch.Generator().manual_seed(name_seed)
            if name.startswith("pos.") and self.pos.init_parameter(name[4:], p, g):
                continue  # the encoding chose this value itself
            if name.endswith(".bias"):
                p.zero_()
            elif name.startswith("ln_") or ".ln_" in name:  # LayerNorm gains
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith("c_proj.weight"):  # scaled residual projections (GPT-2)
                    std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    def attention_context(self, T: int, start: int, device: torch.device,
                          cache: KVCache | None = None, seq_len: int | None = None
                          ) -> AttnContext:
        """Positions, mask and hooks for T new tokens that follow `start` earlier ones, in a
        sequence of `seq_len` tokens (default: the cache's capacity, else start + T)."""
        if seq_len is None:
            seq_len = cache.max_len if cache is not None else start + T
        self.pos.set_length(max(seq_len, start + T))
        if self.cfg.random_positions:
            pos, k_pos = self.random_positions(T, start, device, cache)
        else:
            self.pos.prepare(start + T, device)
            pos = torch.arange(start, start + T, device=device)
            k_pos = torch.arange(0, start + T, device=device)
        bias = self.pos.bias(pos, k_pos)  # (nh, Tq, Tk) or None
        if bias is None:
            if start == 0:
                return AttnContext(pos, None, True, self.pos.rotate, cache)
            mask = None if T == 1 else k_pos[None, :] <= pos[:, None]  # (Tq, Tk) boolean
            return AttnContext(pos, mask, False, self.pos.rotate, cache)
        bias = bias.masked_fill(k_pos[None, :] > pos[:, None], float("-inf"))
        return AttnContext(pos, bias.unsqueeze(0), False, self.pos.rotate, cache)

    def random_positions(self, T: int, start: int, device: torch.device,
                         cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Randomized positions (Ruoss et al. 2023): (T,) query and (start + T,) key positions.

        Training draws a fresh sorted sample from [0, N) per forward pass from torch's global
        CPU generator (seeded by the run and saved in its checkpoints); outside training each
        length has one fixed sample (`positional.eval_positions`), and a cache holds the
        sample of its whole length, so tokens keep their positions as it fills.
        """
        N = self.cfg.random_positions
        self.pos.prepare(N, device)
        if cache is not None:
            if cache.positions is None:
                cache.positions = positional.eval_positions(cache.max_len, N).to(device)
            return cache.positions[start:start + T], cache.positions[:start + T]
        if self.training:
            pos = positional.sample_positions(T, N)
        else:
            pos = positional.eval_positions(T, N)
        pos = pos.to(device)
        return pos, pos

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, last_only: bool = False,
                seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V) (or (B, 1, V) with last_only), loss.

        `seq_len`: the length of the whole sequence these tokens belong to, for values that
        depend on it (rope's dynamic scaling); default the cache's capacity, else T."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        ctx = self.attention_context(T, start, idx.device, cache, seq_len)
        x = self.pos.embed(self.tok_emb(idx), ctx.pos)  # (B, T, C)
        if self.training:  # eval: skip the no-op call
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, i)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        if last_only and T > 1:
            x = x[:, -1:, :]
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A cache in the weights' dtype; in fp32 on CPUs, where attention runs in fp32."""
        w = self.tok_emb.weight
        dtype = torch.float32 if w.device.type == "cpu" else w.dtype
        return KVCache(self.cfg, batch, max_len, w.device, dtype)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer for one forward pass: list of (B, nh, T, T)."""
        attns = [b.attn for b in self.blocks]
        for a in attns:
            a.capture = True
        try:
            self.forward(idx)
            return [a.last_attn for a in attns]
        finally:
            for a in attns:
                a.capture, a.last_attn = False, None
