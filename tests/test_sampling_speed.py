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


# --- --speculate ngram --------------------------------------------------------------------

def test_ngram_draft_follows_the_earliest_longest_match():
    from minigpt.speculative import ngram_draft

    ids = [5, 1, 2, 7, 8, 9, 1, 2, 3, 4, 9, 1, 2]
    assert ngram_draft(ids, 3) == [7, 8, 9]  # "1 2" first seen at 1, followed by 7 8 9
    assert ngram_draft(ids, 10) == [7, 8, 9, 1, 2, 3, 4, 9, 1, 2]
    assert ngram_draft([4, 6, 1, 6], 2) == [1, 6]  # no bigram match: the unigram "6"
    assert ngram_draft([1, 2, 3], 5) == [] and ngram_draft([7], 5) == []


def test_keep_or_redraw_leaves_every_token_distributed_as_p():
    from minigpt.speculative import keep_or_redraw

    probs = torch.tensor([[0.1, 0.5, 0.0, 0.4], [0.0, 0.0, 1.0, 0.0]])  # 2 positions
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(4)
    kept = 0
    for _ in range(n):
        out = keep_or_redraw(probs, [3], g)  # one draft: token 3 at position 0
        counts[int(out[0])] += 1
        if int(out[0]) == 3:  # kept: the second position's token comes free
            kept += 1
            assert len(out) == 2 and int(out[1]) == 2
        else:
            assert len(out) == 1
    assert counts[2] == 0  # never a token of probability 0
    assert torch.allclose(counts / n, probs[0], atol=0.012), counts / n
    assert abs(kept / n - 0.4) < 0.012  # a draft token is kept with probability p(token)


def _peaked_model(pos: str = "rope") -> GPT:
    """A random model whose logits are far apart (no near-ties), with a repetitive habit."""
    cfg = ModelConfig(vocab_size=12, block_size=64, n_layer=2, n_head=2, d_model=32, pos=pos)
    model = GPT(cfg, seed=5).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(20)
    return model


@pytest.mark.parametrize("pos", ["rope", "learned", "alibi"])
def test_speculative_greedy_is_plain_greedy_in_fewer_passes(pos):
    model = _peaked_model(pos)
    x = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2]])
    plain = generate(model, x, 40, temperature=0, dtype="float32")
    # and with a window of 16 (the cache refilled whenever it is full)
    assert torch.equal(generate(model, x, 40, temperature=0, dtype="float32", window=16),
                       generate(model, x, 40, temperature=0, dtype="float32", window=16,
                                speculate="ngram"))
    calls, plain_logits, spec_logits = [], [], []
    generate(model, x, 40, temperature=0, dtype="float32",
             on_step=lambda t, lg: plain_logits.append(lg))
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
    try:
        spec = generate(model, x, 40, temperature=0, dtype="float32", speculate="ngram",
                        on_step=lambda t, lg: spec_logits.append(lg))
    finally:
        hook.remove()
    assert torch.equal(spec, plain)
    # every token's logits as plain decoding computes them (the cache kept the right keys)
    assert torch.allclose(torch.cat(spec_logits), torch.cat(plain_logits), atol=1e-4)
    assert len(calls) < 40 and max(calls) > 1  # drafts were checked several at a time


def test_speculative_sampling_runs_to_length_and_repeats_for_a_seed():
    model = _peaked_model()
    x = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4]])
    kw = dict(temperature=0.9, top_k=6, dtype="float32", speculate="ngram")
    a = generate(model, x, 50, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, x, 50, generator=torch.Generator().manual_seed(3), **kw)
    assert a.shape == (1, 58) and torch.equal(a, b) and torch.equal(a[:, :8], x)


def test_speculate_refuses_batches_and_unknown_methods():
    from minigpt.errors import MiniGPTError

    model = _peaked_model()
    with pytest.raises(MiniGPTError, match="one sequence at a time"):
        generate(model, torch.tensor([[1, 2], [3, 4]]), 3, speculate="ngram")
    with pytest.raises(MiniGPTError, match="one sequence at a time"):
        generate(model, torch.tensor([[1, 2]]), 3, speculate="ngram", use_cache=False)
    with pytest.raises(MiniGPTError, match="speculate must be one of none, ngram"):
        generate(model, torch.tensor([[1, 2]]), 3, speculate="medusa")


def test_sample_cli_speculate_gives_the_greedy_text(tmp_path):
    from conftest import run_cli

    from minigpt.checkpoint import save_weights, write_config
    from minigpt.config import RunConfig
    from minigpt.tokenizers import CharTokenizer

    tok = CharTokenizer.train(["abcdefgh \n"])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                      d_model=32, pos="rope")
    model = GPT(cfg, seed=5)
    ck = tmp_path / "ck"
    ck.mkdir()
    write_config(ck, RunConfig(model=cfg), 0)
    save_weights(ck / "model.safetensors", model, 0)
    tok.save(ck / "tokenizer.json")
    base = ["sample", "--ckpt", ck, "--prompt", "abcabcabc", "--temperature", "0",
            "--max-new-tokens", "30", "--dtype", "float32"]
    plain, spec = run_cli(*base), run_cli(*base, "--speculate", "ngram")
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and len(spec.stdout.strip("\n")) == 39
    bad = run_cli(*base, "--speculate", "ngram", "--num-samples", "2", "--no-cache")
    assert bad.returncode == 2 and "--speculate works one sequence at a time" in bad.stderr
