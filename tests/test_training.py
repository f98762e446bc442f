"""Training runs: outputs on disk, exact resume, interrupts, schedule, refusals."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_training, run_cli, tiny_config
from minigpt.checkpoint import load, read_config
from minigpt.config import merge, preset
from minigpt.errors import CheckpointError, ConfigError, MiniGPTError
from minigpt.positional import REGISTRY
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


@pytest.mark.parametrize("pos", list(REGISTRY))
def test_resume_is_bitwise_exact(corpus, tmp_path, pos):
    """2N steps in one go == N steps, stop, resume for N more (accumulation and dropout on)."""
    cfg = tiny_config(corpus, model={"pos": pos, "dropout": 0.1},
                      train={"max_steps": 6, "grad_accum": 2, "eval_interval": 2})
    train(cfg, tmp_path / "full", progress=False)
    cfg2 = tiny_config(corpus, model={"pos": pos, "dropout": 0.1},
                       train={"max_steps": 6, "grad_accum": 2, "eval_interval": 2})
    half = train(cfg2, tmp_path / "half", until=3, progress=False)
    assert half.step == 3
    resumed = train(cfg2, tmp_path / "half", resume=True, progress=False)
    assert resumed.step == 6
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "half" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def losses(d):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]

    assert losses(tmp_path / "full") == losses(tmp_path / "half")


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


def test_toml_config_and_flags_combine(corpus, tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'preset = "tiny"\n[model]\nn_layer = 3\nd_model = 24\n'
                        f'[train]\ndata = "{corpus}"\nmax_steps = 2\nlr = 0.005\n')
    out = tmp_path / "run"
    r = run_cli("train", "--config", cfg_file, "--d-model", "16", "--out", out, "--quiet",
                "--sample-tokens", "0", "--eval-interval", "2")
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["n_layer"] == 3  # from the file
    assert saved["model"]["d_model"] == 16  # the flag wins
    assert saved["train"]["lr"] == 0.005 and saved["model"]["block_size"] == 32  # tiny preset


def test_sigint_saves_and_the_same_command_with_resume_finishes(corpus, tmp_path):
    out = tmp_path / "run"
    r = interrupt_training(out, signal.SIGINT, "--preset", "tiny", "--data", corpus, "--quiet",
                           "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    assert "saving checkpoint, Ctrl-C again to abandon this save" in r.stderr
    hint = re.search(r"to continue, run the same command with --resume: (minigpt .*)", r.stdout)
    assert hint, r.stdout
    state = json.loads((out / "config.json").read_text())
    assert 0 < state["step"] < 100000
    # the printed command, as given (preset, data and all), with only --max-steps changed
    again = shlex.split(hint.group(1))[1:] + ["--max-steps", str(state["step"] + 3)]
    assert again[0] == "train" and "--resume" in again and "--preset" in again
    r = run_cli(*again)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} from its checkpoint at step {state['step']}\n" in r.stdout
    assert "tokenizing" not in r.stdout  # the token cache already holds this corpus
    assert f"step {state['step'] + 3}:" in r.stdout


def test_init_from_starts_from_the_checkpoint(corpus, tmp_path):
    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--init-from", src, "--out",
                tmp_path / "ft", "--max-steps", "1", "--lr", "1e-9", "--min-lr", "0",
                "--warmup-steps", "0", "--quiet", "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    a = load_file(src / "model.safetensors")
    b = load_file(tmp_path / "ft" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_init_from_rule_is_the_librarys(corpus, tmp_path):
    """train(init_from=...) from Python gets the CLI's rule: model settings other than dropout
    must be the checkpoint's (named, old -> new), checked before any file is written; a
    checkpoint whose tensors no longer match its config is a CheckpointError, not torch's
    RuntimeError; dropout may change and the weights are the checkpoint's."""
    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"init_from takes .*\(n_layer 2 -> 3; d_model 16 "
                                          r"-> 32; d_ff 64 -> 128\); only dropout may change"):
        train(tiny_config(corpus, {"n_layer": 3, "d_model": 32}), bad, init_from=src,
              progress=False)
    assert not bad.exists()
    cfg = tiny_config(corpus, {"dropout": 0.3}, {"max_steps": 1, "lr": 1e-9, "min_lr": 0.0,
                                                 "warmup_steps": 0})
    ft = tmp_path / "ft"
    train(cfg, ft, init_from=src, progress=False)
    saved, _ = read_config(ft)
    assert saved.model.dropout == 0.3 and saved.model.n_layer == 2
    a, b = load_file(src / "model.safetensors"), load_file(ft / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    raw = json.loads((edited / "config.json").read_text())
    raw["model"]["d_model"] = 32
    (edited / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="shape"):
        train(tiny_config(corpus, {"d_model": 32, "d_ff": 64}), tmp_path / "ft2", init_from=edited,
              progress=False)


def test_choice_settings_take_their_values_from_their_literal_type():
    """A setting with a fixed list of values is annotated with a Literal: that one list is
    what the config accepts, what the error lists and what `--help` offers."""
    import typing

    from minigpt.cli import build_parser
    from minigpt.config import ModelConfig, TrainConfig, choices, field_types

    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    seen = []
    for cls, section in ((ModelConfig, "model"), (TrainConfig, "train")):
        for name, typ in field_types(cls).items():
            if typing.get_origin(typ) is not typing.Literal:
                continue
            allowed = typing.get_args(typ)
            seen.append(name)
            assert tuple(choices(cls, name)) == allowed
            assert f"--{name.replace('_', '-')} {{{','.join(allowed)}}}" in train_help
            extra = {"pos": "rope"} if name == "rope_scaling" else {}  # rope's own setting
            for v in allowed:
                got = merge(preset("tiny"), **{section: {**extra, name: v}})
                assert getattr(getattr(got, section), name) == v
            with pytest.raises(MiniGPTError, match=f"must be one of {', '.join(allowed)}, "
                                                   "got 'nonsense'"):
                merge(preset("tiny"), **{section: {name: "nonsense"}})
    assert sorted(seen) == ["activation", "batching", "compile", "dtype", "rope_scaling",
                            "tokenizer"]


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


def test_merge_config_validation_names_the_field():
    with pytest.raises(MiniGPTError, match="d_model"):
        merge(preset("tiny"), {"d_model": 30, "n_head": 4}, None)
    with pytest.raises(MiniGPTError, match="dropout"):
        merge(preset("tiny"), {"dropout": 1.0}, None)


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


def _lrs(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_resume_with_more_steps_keeps_the_schedule_and_says_so(corpus, tmp_path):
    """A larger max_steps on resume trains on at min_lr after the run's own cosine (it does
    not stretch the cosine, which would raise the rate again), interrupted or finished."""
    cfg = tiny_config(corpus, train={"warmup_steps": 2})
    ref = train(cfg, tmp_path / "ref", progress=False)  # the 6-step run, uninterrupted
    ref_lr = _lrs(ref.out)
    min_lr = cfg.train.min_lr
    assert ref_lr[4] > 2 * min_lr  # still decaying near the end
    for until in (3, None):  # interrupted at step 3, or finished at step 6
        out = tmp_path / f"run{until}"
        train(cfg, out, until=until, progress=False)
        said: list[str] = []
        res = train(tiny_config(corpus, train={"warmup_steps": 2, "max_steps": 10}), out,
                    resume=True, progress=False, log=said.append)
        assert res.step == 10
        lr = _lrs(out)
        assert [lr[s] for s in range(1, 7)] == pytest.approx([ref_lr[s] for s in range(1, 7)])
        assert [lr[s] for s in range(7, 11)] == pytest.approx([min_lr] * 4)
        note = [m for m in said if m.startswith("max steps 6 -> 10")]
        assert len(note) == 1 and "not one 10-step run" in note[0], said
        saved = json.loads((out / "config.json").read_text())["train"]
        assert saved["max_steps"] == 10 and saved["lr_decay_steps"] == 6


def test_resuming_a_finished_run_says_it_is_finished(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = ["train", "--preset", "tiny", "--data", corpus, "--out", out, "--quiet",
           "--max-steps", "4", "--eval-interval", "2", "--sample-tokens", "5"]
    r = run_cli(*cmd)
    assert r.returncode == 0 and "--- sample" in r.stdout, r.stderr
    before = (out / "metrics.jsonl").read_bytes(), (out / "model.safetensors").read_bytes()
    r = run_cli(*cmd, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"{out} is at step 4 and nothing was trained: it is already finished" in r.stdout
    assert "tokens/s" not in r.stdout and "--- sample" not in r.stdout
    assert ((out / "metrics.jsonl").read_bytes(), (out / "model.safetensors").read_bytes()) \
        == before
