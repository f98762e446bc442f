"""Each encoding pinned to its published definition, and every one causal and cache-exact."""

from __future__ import annotations

import math

import pytest
import torch

from minigpt.config import ModelConfig
from minigpt.model import GPT
from minigpt.positional import (REGISTRY, PositionLimitError, Rotary, alibi_slopes, build,
                                sinusoid_table, t5_bucket)

ALL = list(REGISTRY)


def cfg(pos: str, **kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, d_model=32, pos=pos)
    return ModelConfig(**{**base, **kw})


def test_registry_has_all_eight():
    assert set(ALL) == {"learned", "sinusoidal", "rope", "alibi", "nope", "t5", "fire", "kerple"}


def test_sinusoidal_closed_form():
    d = 8
    pe = sinusoid_table(torch.arange(50), d)
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rotary_scores_depend_only_on_offset():
    rope = Rotary(cfg("rope"))
    rope.prepare(2000, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 8, generator=g)
    k = torch.randn(1, 1, 1, 8, generator=g)

    def score(m: int, n: int) -> float:
        qm, _ = rope.rotate(q, q, torch.tensor([m]))
        kn, _ = rope.rotate(k, k, torch.tensor([n]))
        return (qm * kn).sum().item()

    for offset in (0, 1, 5, 13):
        ref = score(offset, 0)
        for shift in (3, 40, 1000):  # including far past block_size
            assert score(offset + shift, shift) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert score(5, 0) != pytest.approx(score(6, 0), abs=1e-3)  # it does encode position


def test_rotary_preserves_norm_and_uses_base():
    rope = Rotary(cfg("rope", rope_base=500.0))
    hs = 8
    assert torch.allclose(rope.inv_freq, 500.0 ** (-torch.arange(0, hs, 2).float() / hs))
    x = torch.randn(2, 4, 10, hs)
    y, _ = rope.rotate(x, x, torch.arange(10))
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)


def test_alibi_slopes_power_of_two():
    expected = [2.0 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(8).tolist() == pytest.approx(expected)


def test_alibi_slopes_not_power_of_two():
    # Press et al.: closest power of two (4) gives 2^-2, 2^-4, 2^-6, 2^-8; then every other
    # slope of 8 heads (2^-1, 2^-3, ...) fills the rest: for 6 heads, 2^-1 and 2^-3.
    expected = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    assert alibi_slopes(6).tolist() == pytest.approx(expected)
    assert len(alibi_slopes(12)) == 12


def test_alibi_bias_is_linear_in_distance():
    alibi = build(cfg("alibi", n_head=2))
    b = alibi.bias(torch.arange(5), torch.arange(5))  # (nh, Tq, Tk)
    assert b.shape == (2, 5, 5)
    assert b[0, 4, 1].item() == pytest.approx(-alibi_slopes(2)[0].item() * 3)
    assert b[1, 3, 3].item() == 0.0


def test_t5_buckets_match_hand_computed():
    # num_buckets=32, max_distance=128: distances 0..15 exact; then log-spaced
    # bucket = 16 + floor(log(n/16) / log(128/16) * 16), capped at 31.
    rel = -torch.tensor([0, 1, 15, 16, 20, 31, 32, 64, 127, 128, 1000])
    got = t5_bucket(rel, 32, 128).tolist()
    assert got == [0, 1, 15, 16, 17, 21, 21, 26, 31, 31, 31]
    # causal: keys after the query all share bucket 0
    assert t5_bucket(torch.tensor([1, 5]), 32, 128).tolist() == [0, 0]


def test_parameter_counts():
    c = cfg("learned")
    assert build(c).num_params() == c.block_size * c.d_model
    assert build(cfg("t5")).num_params() == 32 * 4
    assert build(cfg("sinusoidal")).num_params() == 1  # its learned scale
    for name in ("nope", "rope", "alibi"):
        assert build(cfg(name)).num_params() == 0
    assert GPT(cfg("nope")).num_params() + 16 * 32 == GPT(cfg("learned")).num_params()


def test_extrapolation_flags():
    assert {n for n, c in REGISTRY.items() if not c.extrapolates} == {"learned"}


@pytest.mark.parametrize("pos", ALL)
def test_every_encoding_is_causal(pos):
    torch.manual_seed(0)
    model = GPT(cfg(pos), seed=1).eval()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 7) % 50  # change only later tokens
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.equal(a[0, :8], b[0, :8]) or torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:])


@pytest.mark.parametrize("pos", ALL)
def test_cached_logits_equal_full_forward(pos):
    model = GPT(cfg(pos), seed=2).eval()
    T = 16 if pos == "learned" else 40  # past block_size where the encoding allows it
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(2, T)
        parts = [model(x[:, :5], cache=cache)[0]]  # a prompt, then one token at a time
        for t in range(5, T):
            parts.append(model(x[:, t:t + 1], cache=cache)[0])
    stepped = torch.cat(parts, dim=1)
    assert torch.allclose(full, stepped, atol=1e-5), (full - stepped).abs().max()


def test_learned_refuses_positions_past_block_size():
    model = GPT(cfg("learned"))
    with pytest.raises(PositionLimitError, match="learned positions stop at block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("pos", ["sinusoidal", "rope", "alibi", "nope", "t5", "fire", "kerple"])
def test_extrapolating_encodings_evaluate_past_block_size(pos):
    model = GPT(cfg(pos))
    logits, loss = model(torch.zeros(1, 64, dtype=torch.long), torch.zeros(1, 64, dtype=torch.long))
    assert logits.shape == (1, 64, 50) and torch.isfinite(loss)


def test_shared_parameters_start_equal_across_encodings():
    a = dict(GPT(cfg("learned"), seed=7).named_parameters())
    for pos in ("rope", "t5", "alibi"):
        b = dict(GPT(cfg(pos), seed=7).named_parameters())
        shared = set(a) & set(b)
        assert "tok_emb.weight" in shared and "blocks.1.attn.c_attn.weight" in shared
        for k in shared:
            assert torch.equal(a[k], b[k]), k
    assert not torch.equal(GPT(cfg("rope"), seed=8).tok_emb.weight, b["tok_emb.weight"])


@pytest.mark.parametrize("d_model,ratio", [(32, 0.7), (128, 0.7), (256, 0.5)])
def test_sinusoidal_signal_starts_at_the_configured_ratio(d_model, ratio):
    """Position signal rms / token-embedding rms at init = sinusoidal_ratio (0.7 by default,
    Vaswani et al.'s ratio), whatever d_model; the scale is a trained parameter."""
    c = cfg("sinusoidal", d_model=d_model, block_size=256, vocab_size=4000,
            sinusoidal_ratio=ratio)
    model = GPT(c, seed=3)
    tok_rms = model.tok_emb.weight.pow(2).mean().sqrt()
    pos_signal = model.pos.embed(torch.zeros(1, 256, d_model), torch.arange(256))
    pos_rms = pos_signal.pow(2).mean().sqrt()
    assert float((pos_rms / tok_rms).detach()) == pytest.approx(ratio, rel=0.03)
    assert ModelConfig().sinusoidal_ratio == 0.7
    # the scale is learned: it receives a gradient and the optimizer may move it
    _, loss = model(torch.randint(0, 4000, (2, 32)), torch.randint(0, 4000, (2, 32)))
    loss.backward()
    assert model.pos.scale.grad is not None and model.pos.scale.grad.abs() > 0


def test_t5_default_max_distance_trains_every_bucket_used_past_L():
    """t5_max_distance defaults to the trained length, so the distances seen in training
    reach every bucket; an explicit 128 at L = 64 leaves buckets 27-31 untrained, and the
    encoding says so."""
    for L in (32, 64, 128, 1024):
        t5 = build(cfg("t5", block_size=L))
        assert t5.cfg.t5_max_distance == L
        assert t5.buckets_used(8 * L) <= t5.buckets_used(L) and 31 in t5.buckets_used(L), L
        assert t5.untrained(L, 8 * L) is None
    old = build(cfg("t5", block_size=64, t5_max_distance=128))
    assert max(old.buckets_used(64)) == 26
    assert old.untrained(64, 512).startswith("t5 buckets 27-31")
    assert old.untrained(64, 64) is None
    assert build(cfg("rope")).untrained(16, 128) is None


def test_untrained_t5_buckets_really_get_no_gradient():
    model = GPT(cfg("t5", block_size=64, t5_max_distance=128), seed=0)
    _, loss = model(torch.randint(0, 50, (2, 64)), torch.randint(0, 50, (2, 64)))
    loss.backward()
    grad_rows = model.pos.rel_bias.weight.grad.abs().sum(1)  # (buckets,)
    assert (grad_rows[:27] > 0).all() and (grad_rows[27:] == 0).all()


def test_a_sinusoidal_checkpoint_from_before_the_learned_scale_still_loads(corpus, tmp_path):
    """A checkpoint written before `pos.scale` existed (no scale tensor, no sinusoidal_ratio in
    its config) loads with the scale that reproduces it, 1/sqrt(d_model), for sampling and as
    an --init-from source; a current checkpoint missing the tensor is still refused."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from conftest import run_cli, tiny_config
    from minigpt.checkpoint import load
    from minigpt.errors import CheckpointError
    from minigpt.positional import sinusoid_table
    from minigpt.training import train

    new = tmp_path / "new"
    train(tiny_config(corpus, {"pos": "sinusoidal"}), new, progress=False)
    old, broken = tmp_path / "old", tmp_path / "broken"
    for d, drop_ratio in ((old, True), (broken, False)):
        shutil.copytree(new, d)
        for name in ("model.safetensors", "best.safetensors"):
            tensors = load_file(d / name)
            del tensors["pos.scale"]
            save_file(tensors, d / name, metadata={"format": "pt"})
        raw = json.loads((d / "config.json").read_text())
        if drop_ratio:
            del raw["model"]["sinusoidal_ratio"]
        (d / "config.json").write_text(json.dumps(raw))
    model, _, cfg, _ = load(old)
    d_model = cfg.model.d_model
    assert model.pos.scale.item() == pytest.approx(d_model ** -0.5, rel=1e-7)
    x, pos = torch.zeros(1, 5, d_model), torch.arange(5)
    expected = sinusoid_table(pos, d_model) * d_model ** -0.5  # the old code's embed
    assert torch.allclose(model.pos.embed(x, pos)[0], expected, atol=1e-7)
    with pytest.raises(CheckpointError, match="missing tensor"):
        load(broken)
    r = run_cli("sample", "--ckpt", old, "--max-new-tokens", "5", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--init-from", old, "--data", corpus, "--out", tmp_path / "ft",
                "--max-steps", "1", "--quiet", "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
