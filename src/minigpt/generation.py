"""Sampling with Hugging Face's knobs: temperature, top_k, top_p, max_new_tokens.

Temperature 0 is greedy. The order of the filters is HF `generate`'s: temperature, then
top-k, then top-p. With the key/value cache each new token costs one position's work;
without it (`use_cache=False`) every step re-runs the whole window, and both give the same
tokens for the same seed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from .errors import MiniGPTError
from .inference import sampling_model
from .model import GPT


def check_sampling(temperature: float, top_k: int | None, top_p: float | None,
                   max_new_tokens: int) -> None:
    if not temperature >= 0:
        raise MiniGPTError(f"temperature must be 0 (greedy) or positive, got {temperature}.")
    if top_k is not None and top_k < 0:
        raise MiniGPTError(f"top_k must be 0 (off) or a positive integer, got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise MiniGPTError(f"top_p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 0:
        raise MiniGPTError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
                  ) -> torch.Tensor:
    """Set to -inf every logit outside the kept set, exactly as HF's TopK/TopP warpers.

    top-k keeps every token whose logit is at least the k-th largest (ties kept);
    top-p keeps the smallest set of most likely tokens whose probability reaches top_p
    (always at least one).
    """
    if top_k:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1:] = False  # keep at least the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B, 1) chosen ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             on_token: Callable[[torch.Tensor], None] | None = None,
             on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
             dtype: str = "auto", quantize: str | None = None) -> torch.Tensor:
    """idx (B, T) prompt ids -> (B, T + max_new_tokens) ids.

    `on_token(ids)` is called with each step's (B, 1) chosen ids; `on_step(ids, logits)` also
    gets the (B, V) logits they were drawn from (the model's own, before temperature and
    filters). Either may raise to stop generation early.

    A model whose encoding cannot extrapolate (learned) sees at most its last block_size
    tokens: when the window is full the cache is rebuilt from the last block_size tokens.
    Extrapolating encodings keep the whole sequence in the cache.

    `dtype` ("auto", "float32", "bfloat16") and `quantize` (None or "int8") choose the
    weights the tokens are computed with (see `minigpt.inference`); `model` itself is left
    as it is. "float32" reproduces the float32 model exactly.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    model, _ = sampling_model(model, dtype, quantize)
    model.eval()
    L = model.cfg.block_size
    window = None if model.pos.extrapolates else L
    B = idx.shape[0]
    if window is not None and idx.shape[1] > window:
        idx = idx[:, -window:]
    cache = None
    cache_cap = window if window is not None else idx.shape[1] + max_new_tokens
    for _ in range(max_new_tokens):
        ctx_ids = idx if window is None else idx[:, -window:]
        if not use_cache:
            logits, _ = model(ctx_ids, last_only=True)
        elif cache is None or cache.length + 1 > cache_cap:
            # (re)fill the cache with the whole visible context; a learned model whose
            # window is full does this every step, since every position shifts
            cache = model.new_cache(B, cache_cap)
            logits, _ = model(ctx_ids, cache=cache, last_only=True)
        else:
            logits, _ = model(idx[:, -1:], cache=cache, last_only=True)
        nxt = next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat((idx, nxt), dim=1)
        if on_token is not None:
            on_token(nxt)
        if on_step is not None:
            on_step(nxt, logits[:, -1, :])
    return idx


def sample_text(model: GPT, tokenizer, prompt: str, *, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                seed: int = 0, num_samples: int = 1, stream: bool = False,
                use_cache: bool = True, warn: Callable[[str], None] | None = None,
                dtype: str = "auto", quantize: str | None = None) -> list[str]:
    """Prompt text -> generated continuations (prompt included), optionally streamed.

    `dtype` and `quantize` as for `generate`."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    ids = prompt_ids(tokenizer, prompt)
    note = tokenizer.prompt_warning(prompt)
    if note and warn is not None:
        warn(note)
    L = model.cfg.block_size
    if not model.pos.extrapolates and len(ids) > L and warn is not None:
        warn(f"warning: the prompt has {len(ids)} tokens; this {model.cfg.pos} model sees only "
             f"its last {L} (block_size).")
    device = model.tok_emb.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(num_samples):
        x = torch.tensor([ids], dtype=torch.long, device=device)
        if stream:
            if i:
                sys.stdout.write("\n" + "-" * 40 + "\n")
            sys.stdout.write(prompt)
            sys.stdout.flush()
            decoder = _StreamDecoder(tokenizer)
            on_token = decoder.push
        else:
            on_token = None
        y = generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     generator=gen, use_cache=use_cache, on_token=on_token, dtype=dtype,
                     quantize=quantize)
        new_ids = y[0, y.shape[1] - max_new_tokens:].tolist()
        text = prompt + tokenizer.decode(new_ids)
        if stream:
            sys.stdout.write("\n")
            sys.stdout.flush()
        out.append(text)
    return out


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids generation starts from: the prompt's, or one neutral token for an empty one."""
    tokenizer.check_text(prompt)
    return tokenizer.encode(prompt) or [_default_start(tokenizer)]


def _default_start(tokenizer) -> int:
    """A neutral first token for an empty prompt: newline if known, else id 0."""
    try:
        ids = tokenizer.encode("\n")
        return ids[0] if ids else 0
    except MiniGPTError:
        return 0


class TextStream:
    """Turns generated ids, one at a time, into the text each one completes.

    Decoding the whole sequence (not token by token) keeps tokenizers that join words with
    spaces right; BPE bytes may straddle tokens, so a token that ends inside a UTF-8
    character adds "" and the next one adds the whole character.
    """

    def __init__(self, tokenizer) -> None:
        self.tok, self.ids, self.done = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next byte
        new, self.done = text[len(self.done):], text
        return new


class _StreamDecoder(TextStream):
    """Writes each new token's text to stdout as soon as it is complete."""

    def push(self, nxt: torch.Tensor) -> None:  # type: ignore[override]
        sys.stdout.write(super().push(int(nxt[0, 0])))
        sys.stdout.flush()
