"""The leaner decode step samples exactly what the plain loop samples, in every mode."""

from __future__ import annotations

import pytest
import torch

from minigpt.config import ModelConfig
from minigpt.generation import draw, filter_logits, generate
from minigpt.inference import sampling_model
from minigpt.model import GPT


@pytest.mark.parametrize("B,V", [(1, 77), (3, 1000), (2, 5)])
def test_draw_is_multinomial_for_the_same_seed(B, V):
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(B, V, generator=g) * 3
        if seed % 2:
            logits[:, ::3] = float("-inf")  # filtered tokens: probability exactly 0
        probs = logits.softmax(-1)
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        want = torch.multinomial(probs, 1, generator=g1)
        got = draw(probs, g2)
        assert torch.equal(got, want) and got.shape == (B, 1)
        assert torch.equal(g1.get_state(), g2.get_state())  # the same numbers consumed
        if seed % 2:
            assert (got % 3 != 0).all()  # never a token of probability 0


def _plain_loop(model, idx, n, temperature, top_k, top_p, seed, dtype, quantize,
                window=None):
    """Sampling as the decode loop did it before it was made leaner: the public model API,
    torch.cat per token, torch.multinomial, the filter always applied."""
    m, _ = sampling_model(model, dtype, quantize)
    g = torch.Generator().manual_seed(seed)
    if not m.pos.extrapolates:
        window = m.cfg.block_size if window is None else min(window, m.cfg.block_size)
    ids = idx if window is None else idx[:, -window:]
    cap = window if window is not None else ids.shape[1] + n
    cache = None
    with torch.no_grad():
        for _ in range(n):
            if cache is None or cache.length + 1 > cap:
                cache = m.new_cache(ids.shape[0], cap)
                visible = ids if window is None else ids[:, -window:]
                logits = m(visible, cache=cache, last_only=True)[0]
            else:
                logits = m(ids[:, -1:], cache=cache, last_only=True)[0]
            last = logits[:, -1, :]
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                f = filter_logits(last.float() / temperature, top_k, top_p)
                nxt = torch.multinomial(f.softmax(-1), 1, generator=g)
            ids = torch.cat((ids, nxt), 1)
    return ids


@pytest.mark.parametrize("pos", ["rope", "learned"])
@pytest.mark.parametrize("dtype,quantize", [("float32", None), ("bfloat16", None),
                                            ("bfloat16", "int8"), ("float32", "int8")])
def test_the_same_tokens_as_the_plain_loop_in_every_mode(pos, dtype, quantize):
    cfg = ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, d_model=32, pos=pos)
    model = GPT(cfg, seed=3).eval()
    x = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    # learned: 30 new tokens slide past block_size 16, so the cache is refilled every step;
    # rope with window 12 refills it whenever it is full
    for temperature, top_k, top_p, window in [(0.8, None, None, None), (1.0, 5, None, None),
                                              (0.7, None, 0.9, 12), (0, None, None, None)]:
        want = _plain_loop(model, x, 30, temperature, top_k, top_p, 11, dtype, quantize,
                           window)
        got = generate(model, x, 30, temperature=temperature, top_k=top_k, top_p=top_p,
                       generator=torch.Generator().manual_seed(11), dtype=dtype,
                       quantize=quantize, window=window)
        assert torch.equal(got, want), (temperature, top_k, top_p, window)


def test_ids_seen_during_generation_are_the_prefixes_of_the_result():
    cfg = ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, d_model=32, pos="rope")
    model = GPT(cfg, seed=0).eval()
    x = torch.tensor([[1, 2, 3]])
    seen = []
    out = generate(model, x, 10, dtype="float32",
                   generator=torch.Generator().manual_seed(0),
                   on_token=lambda nxt: seen.append(nxt.clone()))
    assert out.shape == (1, 13) and torch.equal(out[:, :3], x)
    assert torch.equal(torch.cat(seen, 1), out[:, 3:])
