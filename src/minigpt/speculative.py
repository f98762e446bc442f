"""Prompt-lookup speculative decoding (`--speculate ngram`): several tokens per forward pass.

Drafts come from the text itself (Saxena 2023, "Prompt Lookup Decoding"; Hugging Face's
`prompt_lookup_num_tokens`): find the earliest earlier occurrence of the sequence's last
two tokens (else its last one) and propose the up to 3 tokens that followed it. One
forward pass over [last token, draft...] with the key/value cache scores every proposal,
and the standard speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023) keeps
a prefix of them: greedy keeps a draft token while it is the argmax; sampling keeps it with
probability p(token) (the draft proposes it with certainty), and at the first refusal
draws from p with that token removed, which leaves every emitted token distributed exactly
as p. Then one more token comes free from the last scored position. The cache is cut back
to the positions that were kept.

Greedy output equals plain greedy decoding up to floating point: scoring k+1 positions at
once sums in a different order than one at a time, so a near-tie may break the other way
(not seen in float32 in the tests). Sampling draws its random numbers differently from plain
sampling, so a seed gives other (equally distributed) text.
"""

from __future__ import annotations

import typing

import torch

from .config import Speculate
from .errors import MiniGPTError, arg
from .logits import draw, filter_logits

# tokens proposed per pass: HF's default is 10, but on a CPU a pass over 11 positions costs
# 1.5-2x one over 1, and 3 was fastest on Shakespeare (docs/performance-sampling.md)
DRAFT_TOKENS = 3
MATCH_TOKENS = 2  # the longest n-gram looked up (HF's max_matching_ngram_size default)


def check_speculate(speculate: str | None, batch: int, use_cache: bool) -> str | None:
    if speculate is None or speculate == "none":
        return None
    if speculate not in typing.get_args(Speculate):  # (SamplingSettings checks it first)
        raise MiniGPTError(f"{arg('speculate')} must be one of none, ngram, got {speculate!r}.")
    if batch != 1 or not use_cache:
        raise MiniGPTError(f"{arg('speculate')} works one sequence at a time with the "
                           "key/value cache; drop it or the batch / no-cache setting.")
    return speculate


def ngram_draft(ids: list[int], k: int, max_n: int = MATCH_TOKENS) -> list[int]:
    """Up to k tokens that followed the earliest earlier occurrence of the last n ids
    (n = max_n, then shorter); [] when nothing matches."""
    L = len(ids)
    for n in range(min(max_n, L - 1), 0, -1):
        tail, i = ids[L - n:], -1
        while True:
            try:  # the next place the tail's first id occurs (list.index: a C loop)
                i = ids.index(tail[0], i + 1, L - n)
            except ValueError:
                break
            if ids[i:i + n] == tail:
                return ids[i + n:i + n + k]
    return []


def keep_or_redraw(probs: torch.Tensor, draft: list[int], generator: torch.Generator | None
                   ) -> list[torch.Tensor]:
    """(k + 1, V) probabilities of the scored positions and k drafted ids -> the emitted
    (1, 1) ids: each draft kept with probability p(draft) (its proposer was certain of it);
    at the first refusal one draw from p without it, and after k kept one draw from the
    last row. Each emitted token is so distributed exactly as p of its position."""
    k = len(draft)
    ids = torch.tensor(draft, dtype=torch.long, device=probs.device)[:, None]  # (k, 1)
    u = torch.rand(k, device=probs.device, generator=generator).tolist()
    p_draft = probs[:k].gather(1, ids).squeeze(1).tolist()  # p(draft j) at position j
    out = []
    for j in range(k):
        if u[j] < p_draft[j]:
            out.append(ids[j:j + 1])
            continue
        rest = probs[j:j + 1].clone()
        rest[0, draft[j]] = 0.0  # the race in `draw` needs no normalising
        out.append(draw(rest, generator))
        return out
    out.append(draw(probs[k:k + 1], generator))  # every draft kept: one more, free
    return out


def verify(model, cache, last: torch.Tensor, draft: list[int], temperature: float,
           top_k: int | None, top_p: float | None, generator: torch.Generator | None
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Score [last, draft...] in one pass -> the emitted ((1, 1) id, (1, V) logits) pairs:
    the kept draft tokens, then one the model chose. The cache keeps `last` and the kept
    drafts; the final emitted token is the next step's input. Every position's choice is
    computed at once and read back in one go (one host sync, not one per token)."""

    start, k = cache.length, len(draft)
    x = torch.cat((last, torch.tensor([draft], dtype=last.dtype, device=last.device)), 1)
    logits, _ = model(x, cache=cache)  # (1, k + 1, V)
    rows = logits[0]  # (k + 1, V)
    out = []
    if temperature == 0:
        best = rows.argmax(dim=-1, keepdim=True)  # (k + 1, 1)
        chosen = best[:, 0].tolist()
        for j in range(k + 1):
            out.append((best[j:j + 1], logits[:, j, :]))
            if j == k or chosen[j] != draft[j]:
                break
    else:
        probs = filter_logits(rows.float() / temperature, top_k, top_p).softmax(dim=-1)
        out = [(tok, logits[:, j, :])
               for j, tok in enumerate(keep_or_redraw(probs, draft, generator))]
    cache.length = start + len(out)  # last + the kept drafts
    return out
