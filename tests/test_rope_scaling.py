"""rope's context-extension methods pinned to their papers' formulas, plain RoPE unchanged,
dynamic NTK consistent with the key/value cache, and the zero-shot / fine-tune commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_config

from minigpt.checkpoint import load, read_config
from minigpt.config import ModelConfig
from minigpt.errors import ConfigError
from minigpt.generation import generate
from minigpt.model import GPT
from minigpt.positional import REGISTRY, rope_frequencies
from minigpt.training import train
from minigpt.viz import draw

SHAPES = [(8, 100.0), (32, 10000.0), (64, 500000.0)]  # (head size, base)
FACTORS = [2.0, 4.0, 8.0]
LENGTHS = [32, 64, 256]


def cfg(hs: int = 8, base: float = 10000.0, L: int = 16, **kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=50, block_size=L, n_layer=2, n_head=2,
                                 d_model=2 * hs, pos="rope", rope_base=base), **kw})


def theta(hs: int, base: float) -> np.ndarray:
    """Su et al.: theta_i = base^(-2i/hs), in float64."""
    return base ** (-np.arange(0, hs, 2) / hs)


def close(ours: torch.Tensor, want: np.ndarray) -> bool:
    return np.allclose(ours.double().numpy(), want, rtol=2e-6, atol=0)


def todays_rope_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The logits of `model` with the rotation tables built by the RoPE code as it was before
    context extension (inv_freq = 1 / base^(arange/hs), cos/sin of cat(freqs, freqs))."""
    c, pos = model.cfg, model.pos
    inv = 1.0 / (c.rope_base ** (torch.arange(0, c.head_size, 2, dtype=torch.float32)
                                 / c.head_size))
    freqs = torch.outer(torch.arange(pos.cos.shape[0], dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    pos.cos, pos.sin = emb.cos(), emb.sin()
    return model(idx)[0]


@pytest.mark.parametrize("scaling,factor", [("none", 1.0), ("linear", 1.0), ("ntk", 1.0),
                                            ("yarn", 1.0), ("dynamic", 4.0)])
def test_factor_one_and_none_are_bit_identical_to_plain_rope(scaling, factor):
    """none (and factor 1 of linear, ntk, yarn; dynamic at any factor within L) compute
    exactly today's RoPE: torch.equal on the logits, not allclose."""
    torch.manual_seed(0)
    plain = GPT(cfg(rope_scaling=scaling, rope_factor=factor), seed=3).eval()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        ours = plain(idx)[0]
        assert torch.equal(ours, todays_rope_logits(plain, idx))


@pytest.mark.parametrize("hs,base", SHAPES)
@pytest.mark.parametrize("s", FACTORS)
@pytest.mark.parametrize("L", LENGTHS)
def test_inverse_frequencies_follow_the_papers(hs, base, s, L):
    """Each method's theta_i and attention factor against its paper's formula in float64."""
    t = theta(hs, base)
    i = np.arange(hs // 2)

    def ours(method: str, n: int | None = None) -> tuple[torch.Tensor, float]:
        return rope_frequencies(cfg(hs, base, L, rope_scaling=method, rope_factor=s), n)

    # position interpolation (Chen et al. 2023): position m -> m / s, i.e. theta_i / s
    f, a = ours("linear")
    assert close(f, t / s) and a == 1.0
    # NTK-aware (bloc97): base -> base * s^(d/(d-2))
    f, a = ours("ntk")
    assert close(f, (base * s ** (hs / (hs - 2))) ** (-2 * i / hs)) and a == 1.0
    # dynamic NTK: plain up to L, then base * (s n / L - (s - 1))^(d/(d-2)) at length n
    assert close(ours("dynamic", L)[0], t) and close(ours("dynamic", L // 2)[0], t)
    for n in (2 * L, 3 * L + 5):
        b = base * (s * n / L - (s - 1)) ** (hs / (hs - 2))
        assert close(ours("dynamic", n)[0], b ** (-2 * i / hs))
    # YaRN (Peng et al. 2023): r_i = L / lambda_i turns within L; r > beta_fast = 32 keeps
    # theta_i, r < beta_slow = 1 interpolates (theta_i / s), a ramp between; q and k times
    # 0.1 ln s + 1
    f, a = ours("yarn")
    assert a == pytest.approx(0.1 * math.log(s) + 1, abs=1e-12)
    r = L / (2 * math.pi / t)
    assert close(f[r > 32], t[r > 32]) and close(f[r < 1], t[r < 1] / s)
    pair = [hs * math.log(L / (2 * math.pi * beta)) / (2 * math.log(base)) for beta in (32, 1)]
    low, high = max(math.floor(pair[0]), 0), min(math.ceil(pair[1]), hs - 1)
    gamma = 1 - np.clip((i - low) / max(high - low, 0.001), 0, 1)
    assert close(f, t / s * (1 - gamma) + t * gamma)
    # Llama 3.1: wavelength > L interpolated, < L/4 kept, between mixed by (L/lambda - 1)/3
    f, a = ours("llama3")
    lam = 2 * math.pi / t
    mix = (L / lam - 1) / 3
    want = np.where(lam > L, t / s, np.where(lam < L / 4, t, (1 - mix) * t / s + mix * t))
    assert close(f, want) and a == 1.0


def test_yarn_scales_q_and_k_so_logits_grow_by_the_temperature():
    """YaRN multiplies q and k each by sqrt(1/t) = 0.1 ln s + 1, so q.k at distance 0 (no
    rotation left) is (0.1 ln s + 1)^2 times plain RoPE's."""
    s = 4.0
    plain, yarn = (REGISTRY["rope"](cfg(rope_scaling=m, rope_factor=f))
                   for m, f in (("none", 1.0), ("yarn", s)))
    q = torch.randn(1, 2, 16, 8)
    pos = torch.arange(16)
    (qp, kp), (qy, ky) = plain.rotate(q, q, pos), yarn.rotate(q, q, pos)
    ratio = (qy * ky).sum(-1) / (qp * kp).sum(-1)
    assert torch.allclose(ratio, torch.full_like(ratio, (0.1 * math.log(s) + 1) ** 2), rtol=1e-5)


def test_dynamic_ntk_is_consistent_with_the_key_value_cache():
    """Dynamic NTK fixes its frequencies for a whole generation (the cache's capacity): the
    cached and uncached generations give the same tokens past L, and each step's logits are
    those of one forward pass over the whole sequence with seq_len = that capacity; a plain
    forward pass of n tokens uses n (transformers' rule)."""
    torch.manual_seed(1)
    m = GPT(cfg(rope_scaling="dynamic", rope_factor=4.0), seed=1).eval()
    prompt = torch.randint(0, 50, (1, 10))
    steps = []
    cached = generate(m, prompt, 40, temperature=0.0, dtype="float32",
                      on_step=lambda i, lg: steps.append(lg))
    uncached = generate(m, prompt, 40, temperature=0.0, use_cache=False, dtype="float32")
    assert torch.equal(cached, uncached)
    with torch.no_grad():
        full = m(cached[:, :-1], seq_len=50)[0][:, -1]
        assert torch.allclose(steps[-1], full, atol=1e-5)
        # a pass of n tokens uses n: equal to a pass whose seq_len says n, different from L
        x = cached[:, :48]
        assert torch.equal(m(x)[0], m(x, seq_len=48)[0])
        assert not torch.allclose(m(x)[0], m(x, seq_len=200)[0])


@pytest.mark.parametrize("kw,match", [
    (dict(rope_factor=2.0), r"rope_factor 2 needs a context-extension method"),
    (dict(rope_scaling="yarn", rope_factor=0.5), r"rope_factor must be at least 1"),
    (dict(pos="learned", rope_scaling="linear", rope_factor=2.0),
     r"pos 'learned' has no such methods"),
    (dict(rope_scaling="ntk", rope_factor=2.0, n_head=8), r"head size above 2"),
    (dict(rope_scaling="bogus"), r"rope_scaling must be one of none, linear"),
    (dict(rope_original_length=32), r"cannot exceed block_size"),
])
def test_the_encoding_refuses_settings_it_cannot_use(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_settings_note_names_the_method_and_its_paper():
    assert REGISTRY["rope"].settings_note(cfg()) is None  # plain rope: unchanged study text
    note = REGISTRY["rope"].settings_note(cfg(rope_scaling="yarn", rope_factor=4.0))
    assert "YaRN (Peng et al. 2023" in note and "factor 4 from the trained length 16" in note


def test_zero_shot_sample_and_fine_tune_at_4L(corpus, tmp_path):
    """A rope checkpoint trained at L: sampled and loaded zero-shot with a method; fine-tuned
    at 4L with --init-from and yarn 4 (the checkpoint keeps L as its original length); other
    changed settings refused by name; a learned checkpoint takes none of it."""
    src = tmp_path / "rope"
    train(tiny_config(corpus, {"pos": "rope"}), src, progress=False)
    plain, _, _, _ = load(src)
    model, _, c, _ = load(src, extension={"rope_scaling": "linear", "rope_factor": 4.0})
    assert (c.model.rope_scaling, c.model.rope_factor, c.model.block_size) == ("linear", 4.0, 16)
    assert torch.equal(model.pos.inv_freq, plain.pos.inv_freq / 4)
    r = run_cli("sample", "--ckpt", src, "--max-new-tokens", "70", "--temperature", "0",
                "--rope-scaling", "yarn", "--rope-factor", "4")
    assert r.returncode == 0, r.stderr
    ft = tmp_path / "ft"
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--init-from", src, "--out", ft,
                "--block-size", "64", "--rope-scaling", "yarn", "--rope-factor", "4",
                "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "1",
                "--batch-size", "2", "--n-layer", "2", "--d-model", "16", "--n-head", "2",
                "--quiet", "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    saved, _ = read_config(ft)
    assert (saved.model.block_size, saved.model.rope_original_length, saved.model.rope_scaling,
            saved.model.rope_factor) == (64, 16, "yarn", 4.0)
    with pytest.raises(ConfigError, match=r"\(n_layer 2 -> 3\); only dropout, block_size, "
                                          r"rope_scaling, rope_factor may change"):
        train(tiny_config(corpus, {"pos": "rope", "n_layer": 3, "block_size": 64}),
              tmp_path / "bad", init_from=src, progress=False)
    learned = tmp_path / "learned"
    train(tiny_config(corpus), learned, progress=False)
    with pytest.raises(ConfigError, match=r"block_size 16 -> 64"):
        train(tiny_config(corpus, {"block_size": 64}), tmp_path / "bad2", init_from=learned,
              progress=False)
    r = run_cli("sample", "--ckpt", learned, "--rope-scaling", "yarn", "--rope-factor", "4")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no context-extension methods" in r.stderr
    raw = json.loads((ft / "config.json").read_text())
    assert raw["init_from"] == str(src)
    # viz of the checkpoint zero-shot with a method: the wavelength picture is added
    paths = draw(None, src, tmp_path / "viz", overrides={"rope_scaling": "ntk",
                                                         "rope_factor": 2.0})
    assert [p.name for p in paths] == ["rope_distance.png", "rope_frequencies.png",
                                       "rope_extension.png"]
    assert [p.name for p in draw(None, src, tmp_path / "viz2")] == [
        "rope_distance.png", "rope_frequencies.png"]  # plain rope: as before


def test_viz_wavelengths_before_and_after_with_L_marked_and_legend_outside(tmp_path):
    """The extension picture plots 2 pi / theta_i before (plain) and after (the method's),
    marks the trained length L and s x L, and keeps its legend outside the axes."""
    import matplotlib.pyplot as plt

    from minigpt import viz

    closed = []
    real_save = viz._save
    viz._save = lambda fig, path: closed.append(fig) or real_save(fig, path)
    try:
        paths = viz.draw("rope", None, tmp_path, preset_name="tiny",
                         overrides={"rope_scaling": "linear", "rope_factor": 4.0})
    finally:
        viz._save = real_save
    assert paths[-1].name == "rope_extension.png" and paths[-1].stat().st_size > 10_000
    fig = closed[-1]
    ax = fig.axes[0]
    before, after, trained, aimed = ax.get_lines()
    assert np.allclose(after.get_ydata(), 4 * before.get_ydata())  # linear: every pair x s
    assert set(trained.get_ydata()) == {32} and set(aimed.get_ydata()) == {128}
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the plot, covering no data
    plt.close(fig)
