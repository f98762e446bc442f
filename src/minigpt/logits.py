"""Choosing the next token from a model's logits, as Hugging Face's `generate` does:
temperature, then top-k, then top-p, then a draw (greedy at temperature 0). Shared by the
decode loop (generation.py) and speculative decoding (speculative.py)."""

from __future__ import annotations

import torch


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
    logits = logits.float() / temperature
    if top_k or (top_p is not None and top_p < 1.0):  # the filter only when asked for
        logits = filter_logits(logits, top_k, top_p)
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) probabilities -> (B, 1) ids: `torch.multinomial(probs, 1)` without its check of
    the input (about ten small ops and a host sync per token). It is the race multinomial
    itself runs for one sample, argmax of p / q with q ~ Exp(1) (the Gumbel-max trick in
    exponential form), drawing the same numbers from `generator`, so a seed gives the same
    token as before (pinned by tests/test_sampling_speed.py). Other devices keep multinomial.
    """
    if probs.device.type not in ("cpu", "cuda"):
        return torch.multinomial(probs, 1, generator=generator)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.div(probs, q, out=q).argmax(dim=-1, keepdim=True)
