"""Numbers from trained models: perplexity at several context lengths on the *same* tokens
with the *same* context budget, loss by position inside the window, confidence intervals,
and generation-quality metrics of samples.

Length generalization: strided sliding windows
----------------------------------------------
One fixed validation span is scored at every length T with windows that move by a stride
s <= L/2 and score only their last s tokens (the sliding-window perplexity of Press et al.
2022 and of Hugging Face's perplexity guide). Window j ends at token e_j = T_max + j*s of the
span; its input is span[e_j - T : e_j] and its targets are one token later, so

- the scored targets, span[T_max - s + 1 : T_max + n*s - s + 1], are identical at every T;
- a scored token at window position i in [T - s, T - 1] has i earlier tokens of context,
  so every scored token at length T sees between T - s and T - 1 tokens before it.

Non-overlapping windows would instead score many tokens with almost no context at every
length, a share that shrinks as T grows and flatters long windows. Per-window mean losses
are kept, so two models (or two lengths) can be compared with a paired bootstrap over the
same windows.

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

from .config import SamplingSettings
from .errors import DataError, MiniGPTError
from .positional import PositionLimitError

# --- the fixed validation span -------------------------------------------------------------


def check_stride(stride: int, lengths: Sequence[int], L: int) -> None:
    if not lengths or min(lengths) < 1:
        raise MiniGPTError("evaluation lengths must be positive token counts.")
    if not isinstance(stride, int) or stride < 1 or stride > max(1, L // 2) \
            or stride > min(lengths):
        raise MiniGPTError(
            f"the evaluation stride must be a whole number from 1 to {max(1, L // 2)} "
            f"(L/2) and at most the shortest length {min(lengths)}, got {stride}.")


def default_stride(lengths: Sequence[int], L: int) -> int:
    return max(1, min(L // 2, min(lengths)))


def eval_span(val: np.ndarray, lengths: Sequence[int], stride: int, tokens: int, *,
              start: int = 0) -> np.ndarray:
    """The validation ids that strided scoring at every length needs: T_max + (n-1)*s + 1
    tokens from `start`, n = ceil(tokens / s) windows (fewer if the split is too short)."""
    _check_span_args(lengths, tokens)
    longest = max(lengths)
    n = -(-tokens // stride)
    avail = len(val) - start - longest - 1  # room for windows after the first
    n = min(n, avail // stride + 1) if avail >= 0 else 0
    if n < 1:
        raise DataError(
            f"the validation split has {len(val)} tokens, too few to score windows of "
            f"{longest} tokens; use shorter --lengths or more text.")
    return np.asarray(val[start: start + longest + (n - 1) * stride + 1], dtype=np.int64)


def _check_span_args(lengths: Sequence[int], tokens: int) -> None:
    if not lengths or min(lengths) < 1:
        raise MiniGPTError("evaluation lengths must be positive token counts.")
    if tokens < 1:
        raise MiniGPTError(f"the number of scored tokens must be at least 1, got {tokens}.")


def eval_blocks(val: np.ndarray, lengths: Sequence[int], stride: int, tokens: int, *,
                blocks: int = 16) -> list[np.ndarray]:
    """Spans for strided scoring spread over the whole validation split: up to `blocks`
    spans of equal size, evenly spaced, together scoring at least `tokens` targets. Windows
    inside one span overlap and are correlated, so a bootstrap resamples whole spans (blocks).
    A split too short for several spans gives one span from its start (as `eval_span`)."""
    _check_span_args(lengths, tokens)
    longest, n = max(lengths), -(-tokens // stride)
    for k in range(min(blocks, n), 1, -1):
        w = -(-n // k)  # windows per block
        need = longest + (w - 1) * stride + 1
        if k * need <= len(val):
            gap = (len(val) - k * need) // k
            return [np.asarray(val[i * (need + gap): i * (need + gap) + need], dtype=np.int64)
                    for i in range(k)]
    return [eval_span(val, lengths, stride, tokens)]


def span_geometry(span: np.ndarray, lengths: Sequence[int], stride: int) -> tuple[int, int]:
    """(T_max, n windows) of a span made by eval_span for these lengths and stride."""
    longest = max(lengths)
    n = (len(span) - 1 - longest) // stride + 1
    return longest, n


def strided_windows(span: np.ndarray, T: int, stride: int, longest: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of length T ending at longest + j*stride: x, y of shape (n, T); only the last
    `stride` columns are scored."""
    n = (len(span) - 1 - longest) // stride + 1
    t = torch.from_numpy(np.ascontiguousarray(span))
    ends = longest + stride * torch.arange(n)  # (n,)
    idx = ends[:, None] - T + torch.arange(T)[None, :]  # (n, T) input positions
    return t[idx], t[idx + 1]


def scored_targets(span: np.ndarray, stride: int, longest: int) -> np.ndarray:
    """The target ids that every length scores, in order."""
    n = (len(span) - 1 - longest) // stride + 1
    return np.asarray(span[longest - stride + 1: longest + (n - 1) * stride + 1])


def windows_of(span: np.ndarray, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of length T from the start of the span: x, y (M // T, T)."""
    M = (len(span) - 1) // T * T
    if M == 0:
        raise ValueError(f"span of {len(span) - 1} tokens is shorter than {T}")
    t = torch.from_numpy(np.ascontiguousarray(span))
    return t[:M].view(M // T, T), t[1:M + 1].view(M // T, T)


@torch.no_grad()
def token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 batch_tokens: int = 8192, last: int | None = None) -> torch.Tensor:
    """Cross-entropy of every target token (or of the `last` ones of each row):
    (N, T or last) float64 on the CPU."""
    device = next(model.parameters()).device
    N, T = x.shape
    keep = T if last is None else last
    rows = max(1, batch_tokens // T)
    out = []
    for i in range(0, N, rows):
        xb, yb = x[i: i + rows].to(device), y[i: i + rows].to(device)
        logits, _ = model(xb)  # (B, T, V)
        logits, yb = logits[:, T - keep:], yb[:, T - keep:]  # (B, keep, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
        out.append(loss.view(yb.shape).double().cpu())
    return torch.cat(out)


def length_generalization(model: torch.nn.Module, spans: np.ndarray | list[np.ndarray],
                          lengths: Sequence[int], stride: int, *, batch_tokens: int = 8192
                          ) -> dict[str, Any]:
    """Strided perplexity of `model` on the same targets at every length, and loss by
    position.

    `spans` is one span or the blocks of `eval_blocks` (all of one size). Returns
    {"span_tokens", "stride", "blocks", "windows_per_block", "results": [{length, multiple,
    tokens, loss, ppl, window_ppl, reason, untrained, window_loss}], "position_loss":
    {"length": T, "loss": [...]}} where window_loss is the mean loss of each scored window
    (the same windows at every length, block after block), window_ppl is the window baseline
    (the same targets scored with only the last L tokens of each window kept: what any model
    gets by forgetting everything older than its trained length), and the position curve is
    the mean loss at positions 0..T-1 of non-overlapping windows of the longest length the
    model can score, in the first block.
    """
    spans = [spans] if isinstance(spans, np.ndarray) else list(spans)
    was_training = model.training
    model.eval()
    longest, n = span_geometry(spans[0], lengths, stride)
    position: dict[str, Any] | None = None
    try:
        results = [_score_length(model, spans, T, stride, longest, batch_tokens)
                   for T in sorted({int(t) for t in lengths})]
        scorable = [r["length"] for r in results if r["loss"] is not None]
        if scorable:
            x, y = windows_of(spans[0], max(scorable))
            position = {"length": max(scorable), "loss": [float(v) for v in token_losses(
                model, x, y, batch_tokens=batch_tokens).mean(0)]}
    finally:
        model.train(was_training)
    return {"span_tokens": n * stride * len(spans), "stride": stride, "blocks": len(spans),
            "windows_per_block": n, "results": results,
            "position_loss": position or {"length": 0, "loss": []}}


def _score_length(model: torch.nn.Module, spans: list[np.ndarray], T: int, stride: int,
                  longest: int, batch_tokens: int) -> dict[str, Any]:
    """One length's row of `length_generalization`."""
    L = model.cfg.block_size
    n = (len(spans[0]) - 1 - longest) // stride + 1
    row: dict[str, Any] = {"length": T, "multiple": T / L, "tokens": n * stride * len(spans),
                           "loss": None, "ppl": None, "window_ppl": None, "reason": None,
                           "untrained": None, "window_loss": []}
    windows = [strided_windows(s, T, stride, longest) for s in spans]
    if T > L:  # the window baseline: only the last L tokens of each window kept
        base = torch.cat([token_losses(model, x[:, -L:], y[:, -L:], batch_tokens=batch_tokens,
                                       last=stride) for x, y in windows])
        row["window_ppl"] = math.exp(min(float(base.mean()), 50.0))
    try:
        if T > L and not model.pos.extrapolates:
            raise PositionLimitError("positions stop at L")
        losses = torch.cat([token_losses(model, x, y, batch_tokens=batch_tokens, last=stride)
                            for x, y in windows])
    except PositionLimitError:
        row["reason"] = f"n/a, {model.cfg.pos} positions stop at L"
        return row
    mean = float(losses.mean())
    untrained = getattr(model.pos, "untrained", lambda a, b: None)
    row.update(loss=mean, ppl=math.exp(min(mean, 50.0)), tokens=int(losses.numel()),
               untrained=untrained(L, T), window_loss=[float(v) for v in losses.mean(1)],
               window_ppl=row["window_ppl"] or (math.exp(min(mean, 50.0)) if T == L else None))
    return row


# --- noise: bootstrap and binomial intervals ------------------------------------------------

def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired items with a 95% percentile-bootstrap interval (Efron &
    Tibshirani 1993; Koehn 2004 for paired comparisons of systems on the same test items)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n (Wilson 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # exactly 0 at k = 0 and 1 at k = n (rounding made 1.0 into 0.9999999999999999, and a
    # plot's error bar of the point above its interval negative)
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))


def unigram_ppl(train: np.ndarray, targets: np.ndarray, vocab_size: int, *,
                chunk: int = 1 << 24) -> float:
    """Perplexity on `targets` of a context-free model: training-token frequencies (add-one
    smoothed). A trained model near this number has not learned to use context."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for i in range(0, len(train), chunk):
        counts += np.bincount(np.asarray(train[i: i + chunk], dtype=np.int64),
                              minlength=vocab_size)[:vocab_size]
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    return float(np.exp(-logp[np.asarray(targets, dtype=np.int64)].mean()))


# --- sampling with a sliding window ---------------------------------------------------------

@torch.no_grad()
def sample_windowed(model: torch.nn.Module, tokenizer: Any, prompt: str,
                    settings: SamplingSettings, *, window: int | None = None) -> str:
    """Generate `settings.max_new_tokens` after `prompt` with `settings` (seeded with its
    seed); return only the generated text.

    Every model sees at most its last `window` tokens (default: its block_size L), so the
    samples of all encodings are compared inside the context they were trained on; how an
    encoding copes with longer contexts is what `length_generalization` measures.
    """
    from .generation import continuation, generate

    tokenizer.check_text(prompt)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise MiniGPTError("the sampling prompt encodes to no tokens; give a non-empty prompt.")
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = generate(model, idx, settings=settings, use_cache=False,
                   window=window or model.cfg.block_size)
    ids = out[0].tolist()
    cut = len(ids) - settings.max_new_tokens
    return continuation(tokenizer, ids[:cut], ids[cut:])


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
