"""Numbers from trained models: perplexity at several context lengths on the *same* tokens,
loss by position inside the window, and generation-quality metrics of samples.

Length generalization, made comparable across lengths
-----------------------------------------------------
One fixed validation span of M + 1 tokens (M a multiple of every evaluated length) is cut
into non-overlapping windows of length T, for each T: inputs span[i*T : (i+1)*T], targets
one token later. Every one of the M target tokens is scored exactly once at every length;
only the amount of context before it changes. So "perplexity at 4L" and "perplexity at L"
average over exactly the same tokens, and a difference is the effect of the length alone.

An encoding that cannot score positions past its trained length L (learned) gets no number
there: `None` plus a reason, never a silently clamped value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, MiniGPTError
from .positional import PositionLimitError

# --- the fixed validation span -------------------------------------------------------------

def span_unit(lengths: Sequence[int]) -> int:
    """The smallest M that every length divides (their least common multiple)."""
    unit = 1
    for n in lengths:
        unit = math.lcm(unit, int(n))
    return unit


def eval_span(val: np.ndarray, lengths: Sequence[int], windows: int, *, start: int = 0
              ) -> np.ndarray:
    """M + 1 validation token ids from `start`, M the smallest multiple of every length with
    at least `windows` windows of the longest length (fewer if the split is too short)."""
    if not lengths or min(lengths) < 1:
        raise MiniGPTError("evaluation lengths must be positive token counts.")
    if windows < 1:
        raise MiniGPTError(f"the number of evaluation windows must be at least 1, got {windows}.")
    unit = span_unit(lengths)
    if unit > 1 << 24:
        raise MiniGPTError(f"the evaluation lengths {list(lengths)} have no common multiple "
                           "below 16M tokens; use lengths that divide the longest one "
                           "(e.g. 1x,2x,4x,8x).")
    want = -(-windows * max(lengths) // unit) * unit  # round up to a multiple of unit
    avail = len(val) - start - 1
    M = min(want, (avail // unit) * unit)
    if M < unit:
        raise DataError(
            f"the validation split has {len(val)} tokens, too few to score windows of "
            f"{unit} tokens; use shorter --lengths or more text.")
    return np.asarray(val[start: start + M + 1], dtype=np.int64)


def windows_of(span: np.ndarray, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the span into non-overlapping windows of length T: x, y of shape (M/T, T)."""
    M = len(span) - 1
    if M % T:
        raise ValueError(f"span of {M} scored tokens is not a multiple of {T}")
    t = torch.from_numpy(np.ascontiguousarray(span))
    return t[:M].view(M // T, T), t[1:].view(M // T, T)


@torch.no_grad()
def token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 batch_tokens: int = 8192) -> torch.Tensor:
    """Cross-entropy of every target token: (N, T) float64 on the CPU."""
    device = next(model.parameters()).device
    N, T = x.shape
    rows = max(1, batch_tokens // T)
    out = []
    for i in range(0, N, rows):
        xb, yb = x[i: i + rows].to(device), y[i: i + rows].to(device)
        logits, _ = model(xb)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
        out.append(loss.view(xb.shape).double().cpu())
    return torch.cat(out)


def length_generalization(model: torch.nn.Module, span: np.ndarray, lengths: Sequence[int], *,
                          batch_tokens: int = 8192) -> dict[str, Any]:
    """Perplexity of `model` on the same span at every length, and loss by position.

    Returns {"span_tokens": M, "results": [{length, multiple, tokens, loss, ppl, reason}],
    "position_loss": {"length": T, "loss": [mean loss at position 0..T-1]}} where the
    position curve is taken at the longest length the model can score.
    """
    was_training = model.training
    model.eval()
    L = model.cfg.block_size
    name = model.cfg.pos
    results: list[dict[str, Any]] = []
    position: dict[str, Any] | None = None
    try:
        for T in sorted({int(t) for t in lengths}):
            row: dict[str, Any] = {"length": T, "multiple": T / L, "tokens": len(span) - 1,
                                   "loss": None, "ppl": None, "reason": None}
            if T > L and not model.pos.extrapolates:
                row["reason"] = f"n/a, {name} positions stop at L"
                results.append(row)
                continue
            x, y = windows_of(span, T)
            try:
                losses = token_losses(model, x, y, batch_tokens=batch_tokens)
            except PositionLimitError:
                row["reason"] = f"n/a, {name} positions stop at L"
                results.append(row)
                continue
            mean = float(losses.mean())
            row.update(loss=mean, ppl=math.exp(min(mean, 50.0)), tokens=int(losses.numel()))
            results.append(row)
            position = {"length": T, "loss": [float(v) for v in losses.mean(0)]}
    finally:
        model.train(was_training)
    return {"span_tokens": len(span) - 1, "results": results,
            "position_loss": position or {"length": 0, "loss": []}}


def unigram_ppl(train: np.ndarray, span: np.ndarray, vocab_size: int, *,
                chunk: int = 1 << 24) -> float:
    """Perplexity on the span's targets of a context-free model: training-token frequencies
    (add-one smoothed). A trained model near this number has not learned to use context."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for i in range(0, len(train), chunk):
        counts += np.bincount(np.asarray(train[i: i + chunk], dtype=np.int64),
                              minlength=vocab_size)[:vocab_size]
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    return float(np.exp(-logp[np.asarray(span[1:], dtype=np.int64)].mean()))


# --- sampling with a sliding window ---------------------------------------------------------

@torch.no_grad()
def sample_windowed(model: torch.nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int,
                    temperature: float, seed: int, window: int | None = None) -> str:
    """Generate `max_new_tokens` after `prompt`; return only the generated text.

    Every model sees at most its last `window` tokens (default: its block_size L), so the
    samples of all encodings are compared inside the context they were trained on; how an
    encoding copes with longer contexts is what `length_generalization` measures.
    """
    from .generation import check_sampling, next_token

    check_sampling(temperature, None, None, max_new_tokens)
    tokenizer.check_text(prompt)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise MiniGPTError("the sampling prompt encodes to no tokens; give a non-empty prompt.")
    window = window or model.cfg.block_size
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    try:
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -window:], last_only=True)
            idx = torch.cat((idx, next_token(logits[:, -1, :], temperature, None, None, gen)), 1)
    finally:
        model.train(was_training)
    return tokenizer.decode(idx[0, len(ids):].tolist())


# --- generation-quality metrics -------------------------------------------------------------

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words (letters/digits with inner apostrophes, as "ne'er")."""
    return WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams; None if there are none."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_share(tokens: Sequence[str], n: int = 4) -> float | None:
    """Share of n-gram occurrences that repeat an n-gram seen earlier in the same text
    (0 = no loops; near 1 = the text keeps repeating itself); None if there are none."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def known_word_share(tokens: Sequence[str], vocabulary: set[str]) -> float | None:
    """Share of generated words that occur in the training text; None if there are none."""
    if not tokens:
        return None
    return sum(1 for w in tokens if w in vocabulary) / len(tokens)


def generation_metrics(text: str, vocabulary: set[str]) -> dict[str, Any]:
    w = words(text)
    return {"words": len(w), "distinct_1": distinct_n(w, 1), "distinct_2": distinct_n(w, 2),
            "repeated_4gram_share": repeated_ngram_share(w, 4),
            "known_word_share": known_word_share(w, vocabulary)}


def training_vocabulary(tokenizer: Any, ids: np.ndarray, *, chunk: int = 1 << 20) -> set[str]:
    """The set of words in the training split (decoded in chunks; a word cut at a chunk
    boundary may add a fragment, which only makes the known-word share more lenient)."""
    vocab: set[str] = set()
    for i in range(0, len(ids), chunk):
        vocab.update(words(tokenizer.decode(np.asarray(ids[i: i + chunk]).tolist())))
    return vocab


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """{"mean", "std", "n"} over the non-None values (sample std, 0 for one value)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "n": len(v)}
