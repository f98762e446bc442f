"""Training runs: outputs on disk, exact resume, interrupts, schedule, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_config
from minigpt.checkpoint import load
from minigpt.config import preset
from minigpt.errors import MiniGPTError
from minigpt.training import lr_at, train


def test_outputs_of_a_run(corpus, tmp_path):
    out = tmp_path / "run"
    res = train(tiny_config(corpus), out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "best.safetensors", "tokenizer.json",
            "metrics.jsonl", "trainer_state.safetensors", "loss.png", "tb"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert [r["step"] for r in val_rows] == [3, 6]
    for key in ("lr", "grad_norm", "tokens_per_s", "elapsed"):
        assert all(key in r for r in train_rows)
    assert val_rows[-1]["val_ppl"] == pytest.approx(2.718281828 ** val_rows[-1]["val_loss"])
    assert res.step == 6 and res.best_val_loss == min(r["val_loss"] for r in val_rows)
    cfg = json.loads((out / "config.json").read_text())
    model, tok, rc, _ = load(out)
    assert cfg["step"] == 6 and cfg["model"]["vocab_size"] == tok.vocab_size
    assert model.num_params() == res.params
    assert load_file(out / "model.safetensors").keys() == load_file(out / "best.safetensors").keys()


def test_training_lowers_the_loss(corpus, tmp_path):
    cfg = tiny_config(corpus, train={"max_steps": 40, "eval_interval": 40, "eval_iters": 4,
                                     "lr": 1e-2})
    res = train(cfg, tmp_path / "run", progress=False)
    first = res.history[0]["train_loss"]
    assert res.final_val_loss < first - 0.5


def test_schedule_warmup_then_cosine():
    tc = preset("small").train
    assert lr_at(0, tc) == pytest.approx(tc.lr / tc.warmup_steps)
    assert lr_at(tc.warmup_steps - 1, tc) == pytest.approx(tc.lr)
    assert lr_at(tc.warmup_steps, tc) == pytest.approx(tc.lr)
    mid = (tc.warmup_steps + tc.max_steps) // 2
    assert lr_at(mid, tc) == pytest.approx((tc.lr + tc.min_lr) / 2, rel=1e-2)
    assert lr_at(tc.max_steps, tc) == pytest.approx(tc.min_lr)


def test_weight_decay_only_on_matrices(corpus):
    from minigpt.model import GPT
    from minigpt.training import make_optimizer

    cfg = tiny_config(corpus, model={"vocab_size": 20})
    opt = make_optimizer(GPT(cfg.model), cfg.train, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.train.weight_decay and no_decay["weight_decay"] == 0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])


def test_refuses_to_overwrite_an_existing_run(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus), out, progress=False)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(MiniGPTError, match="already holds a run"):
        train(tiny_config(corpus), out, progress=False)
    assert (out / "model.safetensors").read_bytes() == before


def test_cli_train_then_sample(corpus, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--out", out, "--max-steps", "4",
                "--eval-interval", "2", "--n-layer", "1", "--quiet", "--sample-tokens", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- sample at temperature") == 3
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["n_layer"] == 1 and saved["train"]["max_steps"] == 4
    args = ["sample", "--ckpt", out, "--prompt", "ALL:", "--max-new-tokens", "30", "--seed", "3",
            "--top-k", "5", "--top-p", "0.9", "--num-samples", "2"]
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("ALL:")
    assert a.stdout.count("ALL:") >= 2


def test_tokens_per_second_counts_the_tokens_fed_not_padded_rows(tmp_path):
    """With --batching documents a row is only as long as the longest example in its batch:
    tokens/s counts those positions, not batch_size x block_size, and the header says the
    step's size is a ceiling."""
    from minigpt.training import load_dataset

    corpus = tmp_path / "short.txt"
    corpus.write_text("\n\n".join(("to be or not " * 3)[: 6 + 5 * (i % 5)] for i in range(400))
                      + "\n", encoding="utf-8")
    cfg = tiny_config(corpus, {"block_size": 64}, {"batching": "documents", "max_steps": 4})
    lines = []
    res = train(cfg, tmp_path / "run", progress=False, log=lines.append)
    data = load_dataset(cfg)
    fed = sum(data.batch("train", step=s, micro=0, batch_size=4, block_size=64,
                         seed=cfg.train.seed, mode="documents")[0].numel() for s in range(4))
    assert fed < 4 * 4 * 64 / 2  # the examples are short: rows of at most 27 positions
    assert res.tokens_per_s * res.elapsed == pytest.approx(fed, rel=1e-9)
    assert "at most 256 tokens per step (4 x rows of up to 64 x 1 accumulation)" in lines[0]


def test_dropout_streams_are_identical_across_encodings() -> None:
    """The first dropout mask of a run is the same whatever the encoding: learned and t5
    build extra nn.Embedding layers, which must not shift the dropout stream."""
    from minigpt.config import merge, preset
    from minigpt.positional import REGISTRY
    from minigpt.training import init_model

    masks = {}
    for pos in REGISTRY:
        cfg = merge(preset("tiny"), {"pos": pos, "dropout": 0.5, "vocab_size": 40}, {"seed": 5})
        model = init_model(cfg).train()
        seen: list[torch.Tensor] = []
        model.drop.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o == 0))
        model(torch.zeros(2, 8, dtype=torch.long) + 3)
        masks[pos] = seen[0]
    first = masks["nope"]
    assert 0.3 < float(first.float().mean()) < 0.7  # dropout really ran
    for pos, m in masks.items():
        assert torch.equal(m, first), pos


