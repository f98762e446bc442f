"""Prompt-lookup speculative decoding (`--speculate ngram`): several tokens per forward pass.

Drafts come from the text itself (Saxena 2023, "Prompt Lookup Decoding"; Hugging Face's
`prompt_lookup_num_tokens`): find the earliest earlier occurrence of the sequence's last
two tokens (else its last one) and propose the up to 10 tokens that followed it. One
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

from .errors import MiniGPTError, arg

Speculate = typing.Literal["ngram"]
DRAFT_TOKENS = 10  # tokens proposed per pass (HF's prompt_lookup_num_tokens default)
MATCH_TOKENS = 2  # the longest n-gram looked up (HF's max_matching_ngram_size default)


def check_speculate(speculate: str | None, batch: int, use_cache: bool) -> str | None:
    if speculate is None or speculate == "none":
        return None
    if speculate not in typing.get_args(Speculate):
        raise MiniGPTError(f"{arg('speculate')} must be ngram or none, got {speculate!r}.")
    if batch != 1 or not use_cache:
        raise MiniGPTError(f"{arg('speculate')} works one sequence at a time with the "
                           "key/value cache; drop it or the batch / no-cache setting.")
    return speculate


def ngram_draft(ids: list[int], k: int, max_n: int = MATCH_TOKENS) -> list[int]:
    """Up to k tokens that followed the earliest earlier occurrence of the last n ids
    (n = max_n, then shorter); [] when nothing matches."""
    L = len(ids)
    for n in range(min(max_n, L - 1), 0, -1):
        tail = ids[L - n:]
        for i in range(L - n):
            if ids[i:i + n] == tail:
                return ids[i + n:i + n + k]
    return []


def keep_or_redraw(probs: torch.Tensor, token: int, generator: torch.Generator | None
                   ) -> tuple[torch.Tensor, bool]:
    """(1, V) probabilities and a drafted token -> ((1, 1) token, kept?): keep it with
    probability p(token), else draw from p without it (the rejection step for a draft that
    proposes its token with certainty)."""
    from .generation import draw

    u = torch.rand((), device=probs.device, generator=generator)
    if u < probs[0, token]:
        return torch.full((1, 1), token, dtype=torch.long, device=probs.device), True
    rest = probs.clone()
    rest[0, token] = 0.0  # the race in `draw` needs no normalising
    return draw(rest, generator), False


def verify(model, cache, last: torch.Tensor, draft: list[int], temperature: float,
           top_k: int | None, top_p: float | None, generator: torch.Generator | None
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Score [last, draft...] in one pass -> the emitted ((1, 1) id, (1, V) logits) pairs:
    the kept draft tokens, then one the model chose. The cache keeps `last` and the kept
    drafts; the final emitted token is the next step's input."""
    from .generation import filter_logits, next_token

    start = cache.length
    x = torch.cat((last, torch.tensor([draft], dtype=last.dtype, device=last.device)), 1)
    logits, _ = model(x, cache=cache)  # (1, k + 1, V)
    out = []
    for j, d in enumerate(draft):
        row = logits[:, j, :]
        if temperature == 0:
            tok = row.argmax(dim=-1, keepdim=True)
            kept = int(tok) == d
        else:
            probs = filter_logits(row.float() / temperature, top_k, top_p).softmax(dim=-1)
            tok, kept = keep_or_redraw(probs, d, generator)
        out.append((tok, row))
        if not kept:
            break
    else:  # every draft kept: the pass scored one more position
        row = logits[:, len(draft), :]
        out.append((next_token(row, temperature, top_k, top_p, generator), row))
    cache.length = start + len(out)  # last + the kept drafts
    return out
