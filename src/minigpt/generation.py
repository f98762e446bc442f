"""Sampling with Hugging Face's knobs: temperature, top_k, top_p, max_new_tokens.

The knobs, their defaults and their checks are the fields of `config.SamplingSettings`;
every function here takes them as keywords (or a whole `settings=SamplingSettings(...)`).

Temperature 0 is greedy. The order of the filters is HF `generate`'s: temperature, then
top-k, then top-p. With the key/value cache each new token costs one position's work;
without it (`use_cache=False`) every step re-runs the whole window, and both give the same
tokens for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .config import SamplingSettings, sampling_settings
from .errors import MiniGPTError, arg
from .inference import sampling_model
from .logits import draw, filter_logits, next_token  # noqa: F401  (part of the API)
from .model import GPT, KVCache
from .speculative import DRAFT_TOKENS, check_speculate, ngram_draft, verify


class Decoding:
    """One generation, a token per step: iterating yields each step's (B, 1) chosen ids and
    the (B, V) logits they were drawn from (the model's own, before temperature and
    filters); `ids` is the sequence so far, (B, T).

    The settings (`settings` and/or the SamplingSettings fields as keywords) are checked and
    the weights chosen when it is built, so a mistake is reported before any output; nothing
    is computed until it is iterated, and it runs once. Tokens are drawn with `generator`
    (its callers seed it from `settings.seed`), or torch's global generator without one.

    The model sees at most its last `window` tokens (default: everything for an encoding
    that extrapolates, block_size for one that cannot); when the window is full the cache is
    rebuilt from the last `window` tokens, which a learned model does every step.
    """

    def __init__(self, model: GPT, idx: torch.Tensor, max_new_tokens: int | None = None, *,
                 settings: SamplingSettings | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 window: int | None = None, **knobs) -> None:
        s = sampling_settings({**knobs, "max_new_tokens": max_new_tokens}, settings)
        self.settings = s
        max_new_tokens, temperature, top_k, top_p = (s.max_new_tokens, s.temperature, s.top_k,
                                                     s.top_p)
        self.speculate = check_speculate(s.speculate, idx.shape[0], use_cache)
        if window is not None and window < 1:
            raise MiniGPTError(f"window must be a positive number of tokens, got {window}.")
        self.model, self.info = sampling_model(model, s.dtype, s.quantize)
        if not self.model.pos.extrapolates:
            L = self.model.cfg.block_size
            window = L if window is None else min(window, L)
        N = self.model.cfg.random_positions  # trained on positions below N: none past it
        if N:
            window = N if window is None else min(window, N)
        self.window = window
        self.ids = idx if window is None else idx[:, -window:]  # (B, T)
        self.max_new_tokens, self.use_cache = max_new_tokens, use_cache
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.started = False

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.started:  # going on from where it stopped would silently extend the sequence
            raise RuntimeError("a Decoding runs once; build a new one to generate again.")
        self.started = True
        model, window = self.model, self.window
        was_training = model.training
        model.eval()
        cache = None
        B, T0 = self.ids.shape
        cache_cap = window if window is not None else T0 + self.max_new_tokens
        # every id of the generation, written in place: self.ids is a view of its first n
        buf = self.ids.new_empty(B, T0 + self.max_new_tokens)  # (B, T0 + max_new_tokens)
        buf[:, :T0] = self.ids
        nxt, n, end = None, T0, T0 + self.max_new_tokens
        seen = buf[0, :T0].tolist() if self.speculate else []  # the ids drafts are looked up in
        try:
            while n < end:
                room = 0 if cache is None else min(end - n - 1, cache_cap - cache.length - 1)
                draft = ngram_draft(seen, min(room, DRAFT_TOKENS)) if seen and room > 0 else []
                if draft:  # several tokens from one pass (see minigpt.speculative)
                    steps = verify(model, cache, nxt, draft, self.temperature, self.top_k,
                                   self.top_p, self.generator)
                else:
                    tok, last, cache = self._step(model, buf, n, nxt, cache, cache_cap)
                    steps = [(tok, last)]
                for nxt, last in steps:
                    buf[:, n:n + 1] = nxt
                    n += 1
                    self.ids = buf[:, :n]
                    if self.speculate:
                        seen.append(int(nxt))
                    yield nxt, last
        finally:
            model.train(was_training)

    def _step(self, model: GPT, buf: torch.Tensor, n: int, nxt: torch.Tensor | None,
              cache: KVCache | None, cache_cap: int
              ) -> tuple[torch.Tensor, torch.Tensor, KVCache | None]:
        """One token after the first n of `buf`: its (B, 1) id, the (B, V) logits it was
        drawn from, and the cache (a new one when it was (re)filled)."""
        if self.use_cache and cache is not None and cache.length < cache_cap:
            logits, _ = model(nxt, cache=cache, last_only=True)  # one new position
        else:
            window = self.window
            visible = buf[:, max(0, n - window) if window else 0:n]  # a view, no copy
            if not self.use_cache:  # seq_len: the frequencies a cache would use
                logits, _ = model(visible, last_only=True, seq_len=cache_cap)
            else:  # (re)fill the cache with the whole visible context
                cache = model.new_cache(buf.shape[0], cache_cap)
                logits, _ = model(visible, cache=cache, last_only=True)
        last = logits[:, -1, :]  # (B, V)
        nxt = next_token(last, self.temperature, self.top_k, self.top_p, self.generator)
        return nxt, last, cache


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int | None = None, *,
             settings: SamplingSettings | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             on_token: Callable[[torch.Tensor], None] | None = None,
             on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
             window: int | None = None, **knobs) -> torch.Tensor:
    """idx (B, T) prompt ids -> (B, T + max_new_tokens) ids.

    The sampling knobs (`temperature`, `top_k`, `top_p`, `max_new_tokens`, `seed`, `dtype`,
    `quantize`: the fields of `SamplingSettings`, with its defaults) come as keywords or as
    `settings`, keywords overriding it. Tokens are drawn with `generator`; or, where a seed
    is given (as `seed=` or in `settings`), with a generator seeded with it; else with
    torch's global generator, as Hugging Face's `generate()`.

    `on_token(ids)` is called with each step's (B, 1) chosen ids; `on_step(ids, logits)` also
    gets the (B, V) logits they were drawn from. Either may raise to stop generation early.

    A model whose encoding cannot extrapolate (learned) sees at most its last block_size
    tokens (and so does every model given `window`); see `Decoding`.

    `dtype` ("auto", "float32", "bfloat16") and `quantize` ("none" or "int8") choose the
    weights the tokens are computed with (see `minigpt.inference`); `model` itself is left
    as it is. "float32" reproduces the float32 model exactly. `speculate="ngram"` drafts
    tokens by prompt lookup and checks them in one pass (batch 1; `minigpt.speculative`).
    """
    if settings is not None or knobs.get("seed") is not None:
        if generator is not None:
            raise MiniGPTError(f"give generate() a {arg('seed')} or a generator, not both.")
        seed = sampling_settings(knobs, settings).seed
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    steps = Decoding(model, idx, max_new_tokens, settings=settings, generator=generator,
                     use_cache=use_cache, window=window, **knobs)
    for nxt, logits in steps:
        if on_token is not None:
            on_token(nxt)
        if on_step is not None:
            on_step(nxt, logits)
    return steps.ids


def stream_text(model: GPT, tokenizer, prompt: str, *,
                settings: SamplingSettings | None = None, num_samples: int = 1,
                use_cache: bool = True, warn: Callable[[str], None] | None = None,
                **knobs) -> Samples:
    """Prompt text -> (sample number, text) pieces as soon as each is complete: every
    sample starts with the prompt, then each new token's text follows.

    Everything is checked now, before the first piece; `warn` hears about the prompt when
    iteration starts. The samples are drawn one after another from one generator seeded
    with `seed`. The knobs as for `generate`.
    """
    return Samples(model, tokenizer, prompt, sampling_settings(knobs, settings), num_samples,
                   use_cache=use_cache, warn=warn)


def sample_text(model: GPT, tokenizer, prompt: str, *,
                settings: SamplingSettings | None = None, num_samples: int = 1,
                use_cache: bool = True, warn: Callable[[str], None] | None = None,
                **knobs) -> list[str]:
    """Prompt text -> generated continuations, the prompt included (`stream_text` gives the
    same text piece by piece). The knobs as for `generate`."""
    s = sampling_settings(knobs, settings)
    samples = Samples(model, tokenizer, prompt, s, num_samples, use_cache=use_cache, warn=warn)
    samples.tell()
    out = []
    for run in samples.runs:
        for _ in run:
            pass
        n_prompt = run.ids.shape[1] - s.max_new_tokens
        ids = run.ids[0].tolist()
        out.append(prompt + continuation(tokenizer, ids[:n_prompt], ids[n_prompt:]))
    return out


def continuation(tokenizer, context: list[int], new_ids: list[int]) -> str:
    """The text `new_ids` add after `context` (the prompt's ids): the decode of the whole
    sequence past the decode of the context, so a word tokenizer puts its space between the
    prompt's last word and the first new one, as decoding all the ids would."""
    return TextStream(tokenizer, context).extend(new_ids)


class Samples:
    """`num_samples` generations from one prompt, drawn one after another from one generator
    seeded with `settings.seed`; iterating gives (sample number, text) pieces. `info` says
    which weights compute them."""

    def __init__(self, model: GPT, tokenizer, prompt: str, settings: SamplingSettings,
                 num_samples: int = 1, *, use_cache: bool = True,
                 warn: Callable[[str], None] | None = None) -> None:
        if num_samples < 1:
            raise MiniGPTError(f"{arg('num_samples')} must be at least 1, got {num_samples}.")
        ids = prompt_ids(tokenizer, prompt)
        device = model.tok_emb.weight.device
        gen = torch.Generator(device=device).manual_seed(settings.seed)
        x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        self.runs = [Decoding(model, x, settings=settings, generator=gen, use_cache=use_cache)
                     for _ in range(num_samples)]
        self.info = self.runs[0].info
        self.tokenizer, self.prompt, self.warn = tokenizer, prompt, warn
        long_prompt = prompt_note(model, len(ids))
        self.notes = [n for n in (tokenizer.prompt_warning(prompt),
                                  long_prompt and f"warning: {long_prompt}") if n]

    def tell(self) -> None:
        """Pass the prompt's warnings to `warn`."""
        for note in self.notes:
            if self.warn is not None:
                self.warn(note)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        self.tell()
        for i, run in enumerate(self.runs):
            yield i, self.prompt
            text = TextStream(self.tokenizer, run.ids[0].tolist())
            for nxt, _ in run:
                piece = text.push(int(nxt[0, 0]))
                if piece:
                    yield i, piece
            rest = text.extend([])  # bytes left waiting for a character that never came
            if rest:
                yield i, rest


def prompt_note(model: GPT, n_prompt: int) -> str | None:
    """What a user should know about a prompt of `n_prompt` tokens for this model: that an
    encoding which cannot extrapolate sees only the last block_size of them."""
    L = model.cfg.block_size
    if model.pos.extrapolates or n_prompt <= L:
        return None
    return (f"the prompt has {n_prompt} tokens; this {model.cfg.pos} model sees only its last "
            f"{L} (block_size).")


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

    Decoding the whole sequence (not token by token), after the `context` ids the generation
    started from (the prompt's), keeps tokenizers that join words with spaces right: the
    word tokenizer's space before the first new word comes with that word. BPE bytes may
    straddle tokens, so a token that ends inside a UTF-8 character adds "" and the next one
    adds the whole character.
    """

    def __init__(self, tokenizer, context: list[int] | None = None) -> None:
        self.tok, self.ids = tokenizer, list(context or [])
        self.done = tokenizer.decode(self.ids) if self.ids else ""

    def extend(self, ids: list[int]) -> str:
        """The text all of `ids` add (incomplete UTF-8 at the very end included)."""
        self.ids.extend(ids)
        text = self.tok.decode(self.ids)
        new, self.done = text[len(self.done):], text
        return new

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next byte
        new, self.done = text[len(self.done):], text
        return new
