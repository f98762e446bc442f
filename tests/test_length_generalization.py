"""FIRE, Kerple and randomized positions pinned to their papers' formulas (issue 21), and
the bench that times every encoding's training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_TEXT, run_cli, tiny_config

from minigpt import evaluation, viz
from minigpt.config import ModelConfig
from minigpt.errors import ConfigError, MiniGPTError
from minigpt.model import GPT
from minigpt.positional import (REGISTRY, PositionLimitError, eval_positions,
                                sample_positions)


def cfg(pos: str, **kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16, pos=pos)
    return ModelConfig(**{**base, **kw})


# --- FIRE (Li et al. 2023) ------------------------------------------------------------------

def hand_fire(c: float, L: float):
    """The paper's b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), with the
    2-unit MLP set in `fire_with_hand_mlp`: f0(x) = relu(x) + 0.1, f1(x) = 2 relu(0.5 - x) - 0.1."""

    def b(i: int, j: int) -> tuple[float, float]:
        x = math.log(c * (i - j) + 1) / math.log(c * max(L, i) + 1)
        return max(x, 0) + 0.1, 2 * max(0.5 - x, 0) - 0.1

    return b


def fire_with_hand_mlp(c: float, scale: float) -> GPT:
    model = GPT(cfg("fire", fire_mlp_width=2), seed=0)
    p = model.pos
    with torch.no_grad():
        p.mlp[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        p.mlp[0].bias.copy_(torch.tensor([0.0, 0.5]))
        p.mlp[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        p.mlp[2].bias.copy_(torch.tensor([0.1, -0.1]))
        p.c.fill_(c)
        p.threshold_scale.fill_(scale)
    return model


def test_fire_bias_is_the_papers_formula_before_and_past_the_threshold():
    model = fire_with_hand_mlp(c=0.3, scale=0.75)  # threshold L = 0.75 x block_size 16 = 12
    expect = hand_fire(0.3, 12.0)
    pos = torch.arange(40)
    with torch.no_grad():
        bias = model.pos.bias(pos, pos)  # (2, 40, 40)
    for i, j in [(0, 0), (5, 2), (11, 0), (12, 3), (20, 0), (39, 1), (39, 38)]:
        got = bias[:, i, j].tolist()
        assert got == pytest.approx(expect(i, j), abs=1e-5), (i, j)


def test_fire_maps_the_farthest_key_to_one_once_the_query_passes_the_threshold():
    # progressive interpolation: past L the normalised distance of key 0 is exactly 1, so
    # a query at 20 or at 2000 sees its first token through the same MLP input
    model = fire_with_hand_mlp(c=0.1, scale=1.0)
    with torch.no_grad():
        x = [float(model.pos.inputs(torch.tensor([i]), torch.tensor([0]))[0, 0]) for i in
             (8, 16, 20, 2000)]
    assert x[0] == pytest.approx(math.log(1.8) / math.log(2.6), abs=1e-6)  # below L = 16
    assert x[1:] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_fire_starts_as_the_reference_does():
    p = GPT(cfg("fire"), seed=0).pos
    assert p.c.item() == pytest.approx(0.1) and p.threshold().item() == 16.0
    w = p.mlp[0].weight  # nn.Linear(1, 32) default: U(-1, 1)
    assert w.abs().max() <= 1.0 and w.std() > 0.3
    assert p.mlp[2].weight.abs().max() <= 32 ** -0.5
    # drawn from the per-name seeded generators: same seed, same values; other seed, other
    assert torch.equal(w, GPT(cfg("fire"), seed=0).pos.mlp[0].weight)
    assert not torch.equal(w, GPT(cfg("fire"), seed=1).pos.mlp[0].weight)


def test_fire_names_the_mlp_inputs_a_longer_evaluation_reaches():
    p = fire_with_hand_mlp(c=0.1, scale=1.0).pos
    note = p.untrained(16, 64)
    seen = math.log(1 + 0.1 * 15) / math.log(1 + 0.1 * 16)
    assert note == (f"fire's MLP inputs {seen:.3f}-1.000 (normalised distances past the "
                    "trained 16 positions) were never seen in training")
    assert p.untrained(16, 16) is None
    # with random positions up to 64 training already reached every input
    q = GPT(cfg("fire", random_positions=64)).pos
    assert q.untrained(16, 64) is None


# --- Kerple, log variant (Chi et al. 2022) ---------------------------------------------------

def test_kerple_bias_is_minus_r1_log_one_plus_r2_distance():
    model = GPT(cfg("kerple"), seed=0)
    with torch.no_grad():
        model.pos.r1.copy_(torch.tensor([0.5, 2.0]))
        model.pos.r2.copy_(torch.tensor([1.0, 0.1]))
        bias = model.pos.bias(torch.arange(30), torch.arange(30))
    for i, j in [(0, 0), (3, 1), (29, 0), (17, 9)]:
        expect = [-0.5 * math.log(1 + 1.0 * (i - j)), -2.0 * math.log(1 + 0.1 * (i - j))]
        assert bias[:, i, j].tolist() == pytest.approx(expect, abs=1e-6)


def test_kerple_starts_spread_over_the_reference_ranges():
    p = GPT(cfg("kerple", n_head=4, d_model=16), seed=5).pos
    assert p.r1.tolist() == pytest.approx([0.25, 0.75, 1.25, 1.75])  # midpoints of U(0, 2)
    assert p.r2.tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])  # of U(0, 1)
    assert p.untrained(16, 1000) is None  # every parameter acts at every distance


def test_kerple_parameters_below_the_floor_act_as_the_floor_and_still_learn():
    p = GPT(cfg("kerple"), seed=0).pos
    with torch.no_grad():
        p.r1.copy_(torch.tensor([-0.5, 1.0]))
        p.r2.copy_(torch.tensor([1.0, 0.0]))
    bias = p.bias(torch.tensor([5]), torch.tensor([0]))  # distance 5
    assert bias[:, 0, 0].tolist() == pytest.approx(
        [-0.01 * math.log(6), -1.0 * math.log(1 + 0.01 * 5)], abs=1e-6)
    bias.sum().backward()
    assert p.r1.grad[0] != 0 and p.r2.grad[1] != 0  # a way back above the floor


# --- randomized positions (Ruoss et al. 2023) -------------------------------------------------

def test_sampled_positions_are_sorted_distinct_below_n_and_seeded():
    torch.manual_seed(3)
    a = sample_positions(20, 100)
    torch.manual_seed(3)
    b = sample_positions(20, 100)
    assert torch.equal(a, b)
    assert a.tolist() == sorted(set(a.tolist())) and 0 <= a.min() and a.max() < 100
    assert not torch.equal(a, sample_positions(20, 100))  # a fresh draw each call
    # outside training: one fixed sample per length, from a generator seeded with it
    ref = torch.randperm(100, generator=torch.Generator().manual_seed(20))[:20].sort().values
    assert torch.equal(eval_positions(20, 100), ref) and torch.equal(eval_positions(20, 100), ref)
    with pytest.raises(PositionLimitError, match="random_positions is 100, so a sequence of 101"):
        sample_positions(101, 100)


def test_random_positions_cover_the_whole_range_in_expectation():
    # each of the N positions is in a sample of n with probability n / N
    torch.manual_seed(0)
    counts = torch.zeros(64)
    for _ in range(2000):
        counts[sample_positions(16, 64)] += 1
    assert (counts / 2000).tolist() == pytest.approx([16 / 64] * 64, abs=0.05)


@pytest.mark.parametrize("pos", [n for n, c in REGISTRY.items() if c.reads_positions])
def test_training_positions_change_the_output_and_follow_the_seed(pos):
    model = GPT(cfg(pos, random_positions=256), seed=1).train()
    x = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model(x)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "fire", "kerple"])
def test_random_positions_cache_gives_the_logits_of_the_full_sequence(pos):
    model = GPT(cfg(pos, random_positions=128), seed=2).eval()
    T = 40  # past block_size 16: every position-reading encoding can, up to N
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(2, T)
        parts = [model(x[:, :5], cache=cache)[0]]
        for t in range(5, T):
            parts.append(model(x[:, t:t + 1], cache=cache)[0])
    assert torch.allclose(full, torch.cat(parts, dim=1), atol=1e-5)


def test_learned_table_has_n_rows_and_training_reaches_past_block_size():
    model = GPT(cfg("learned", random_positions=64), seed=0).train()
    assert model.pos.wpe.weight.shape == (64, 16)
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 16))
    for _ in range(8):
        model(x, x)[1].backward()
    touched = (model.pos.wpe.weight.grad.abs().sum(1) > 0).nonzero().flatten()
    assert touched.max() >= 16  # rows a block_size table would not have
    assert model.pos.untrained(16, 64) is None
    # so it is read past block_size (up to N) like any encoding that extrapolates
    assert model.pos.extrapolates and not GPT(cfg("learned"), seed=0).pos.extrapolates
    spans = [np.arange(200) % 50]
    lg = evaluation.length_generalization(model.eval(), spans, [16, 32, 64, 128], stride=8)
    rows = {r["length"]: r for r in lg["results"]}
    assert all(rows[n]["loss"] is not None and rows[n]["reason"] is None for n in (32, 64))
    assert rows[128]["loss"] is None and "stop" in rows[128]["reason"]  # past N = 64


def test_random_positions_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match="random_positions applies only to encodings that "
                       "read positions and nope reads none; set random_positions to 0."):
        cfg("nope", random_positions=64)
    with pytest.raises(ConfigError, match=r"random_positions \(8\) must be 0 \(off\) or at least "
                       r"block_size \(16\)"):
        cfg("rope", random_positions=8)
    model = GPT(cfg("alibi", random_positions=32)).eval()
    with pytest.raises(PositionLimitError, match="use at most 32 tokens"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_cli_refuses_random_positions_with_nope_in_one_line(tmp_path: Path):
    r = run_cli("train", "--pos", "nope", "--random-positions", "64", "--out", tmp_path / "r")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope reads none" in r.stderr


def test_a_random_positions_run_is_reproducible_from_its_seed(tmp_path: Path):
    from minigpt.training import train

    corpus = tmp_path / "c.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    losses = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        c = tiny_config(corpus, model={"pos": "rope", "random_positions": 128},
                        train={"max_steps": 4, "eval_interval": 4, "seed": seed})
        train(c, tmp_path / name, progress=False, log=lambda *a, **k: None)
        rows = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().split("\n")
                if s]
        losses.append([(r.get("train_loss"), r.get("val_loss")) for r in rows])
        assert len(losses[-1]) >= 4
    assert losses[0] == losses[1] and losses[0] != losses[2]


# --- viz, export ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fire_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from minigpt.training import train

    root = tmp_path_factory.mktemp("fire")
    corpus = root / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    c = tiny_config(corpus, model={"pos": "fire"}, train={"max_steps": 2, "eval_interval": 2})
    train(c, root / "run", progress=False, log=lambda *a, **k: None)
    return root / "run"


def _legend_outside(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend()
    return leg.get_window_extent().x0 >= ax.get_window_extent().x1


@pytest.mark.parametrize("pos", ["fire", "kerple"])
def test_viz_draws_the_bias_per_head_with_l_marked_and_the_legend_outside(
        pos, fire_ckpt, tmp_path, monkeypatch):
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path

    monkeypatch.setattr(viz, "_save", keep)
    ckpt = fire_ckpt if pos == "fire" else None
    paths = viz.draw(None if ckpt else pos, ckpt, tmp_path, overrides=None if ckpt else
                     {"block_size": 16})
    assert [p.name for p in paths] == [f"{pos}_bias.png", f"{pos}_bias_distance.png"]
    ax = figs[1].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["head 0", "head 1"] and "trained context 16" in labels
    assert _legend_outside(figs[1])
    head0 = ax.get_lines()[0].get_ydata()
    src = viz._source(None if ckpt else pos, ckpt, None, {} if ckpt else {"block_size": 16},
                      "last", None)
    with torch.no_grad():
        row = src.module.bias(torch.tensor([32]), torch.arange(33))[0, 0].flip(-1)
    assert head0 == pytest.approx(row.numpy(), abs=1e-6)


def test_export_refuses_fire_and_random_positions_in_one_sentence(fire_ckpt, tmp_path):
    pytest.importorskip("transformers")
    r = run_cli("export", "--ckpt", fire_ckpt, "--out", tmp_path / "hf")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "'fire' encoding cannot be exported" in r.stderr
    from minigpt.hf import HFError, refuse_unexportable

    with pytest.raises(HFError, match="trained with random_positions cannot be exported"):
        refuse_unexportable(cfg("learned", random_positions=64))


# --- bench --pos-overhead -------------------------------------------------------------------

def test_pos_overhead_times_every_encoding_against_nope(tmp_path: Path):
    from minigpt.bench_positions import format_table, run

    res = run(dtype="float32", rounds=2, warmup=0, encodings=["alibi", "kerple"],
              log=lambda s: None)
    rows = res["dtypes"]["fp32"]
    assert list(rows) == ["nope", "alibi", "kerple"]  # nope added as the baseline
    assert rows["nope"]["ratio"] == 1.0
    for r in rows.values():
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert r["ratio"] == pytest.approx(r["median_ms"] / rows["nope"]["median_ms"])
    assert "kerple" in format_table(res) and "vs nope" in format_table(res)
    with pytest.raises(MiniGPTError, match="unknown positional encoding 'fir'"):
        run(encodings=["fir"])


def test_parameter_counts_of_the_new_encodings():
    from minigpt.positional import build

    c = cfg("fire", n_head=4, d_model=16)  # MLP 1 -> 32 -> 4, plus c and the threshold
    assert build(c).num_params() == (32 + 32) + (32 * 4 + 4) + 2
    assert build(cfg("kerple", n_head=4, d_model=16)).num_params() == 8


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_sampling_past_random_positions_n_keeps_a_window_of_n(pos):
    """A model trained on positions below N samples any number of tokens: it sees at most
    its last N (a learned table has no row N, and N positions run out for the others)."""
    from minigpt.generation import generate

    model = GPT(cfg(pos, random_positions=24), seed=0).eval()
    out = generate(model, torch.zeros((1, 1), dtype=torch.long), max_new_tokens=40,
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 41)
