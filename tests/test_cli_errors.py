"""Bad input: one sentence on stderr, exit code 2, no traceback, no file changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config
from minigpt.training import train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    text = d / "c.txt"
    text.write_text("ALL:\nSpeak, speak.\n\n" * 200)
    out = d / "run"
    train(tiny_config(text), out, progress=False)
    return out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_clean_error(r, match: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr
    assert len(err.splitlines()) == 1, err
    assert match.lower() in err.lower(), err


def test_train_bad_inputs(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("hey there\n" * 20)
    base = ["train", "--preset", "tiny", "--quiet", "--out", tmp_path / "o"]
    cases = [
        (["--data", tmp_path / "missing.txt"], "does not exist"),
        (["--data", empty], "empty"),
        (["--data", short, "--block-size", "500"], "fewer than block_size"),
        (["--data", corpus, "--d-model", "30", "--n-head", "4"], "divisible by n_head"),
        (["--data", corpus, "--dropout", "1.5"], "dropout"),
        (["--data", corpus, "--batch-size", "0"], "--batch-size must be between"),
        (["--preset", "huge"], "unknown preset"),
        (["--data", corpus, "--pos", "fourier"], "invalid choice"),
        (["--data", corpus, "--tokenizer", "sentencepiece"], "invalid choice"),
        (["--data", corpus, "--n-layer", "two"], "invalid int value"),
        (["--config", tmp_path / "nope.toml"], "does not exist"),
    ]
    for extra, match in cases:
        assert_clean_error(run_cli(*base, *extra), match)
    assert not (tmp_path / "o" / "config.json").exists()


def test_config_file_with_unknown_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layers = 3\n")
    assert_clean_error(run_cli("train", "--config", f, "--out", tmp_path / "o"),
                       "unknown model setting(s) n_layers")


def test_existing_run_is_not_overwritten(ckpt, corpus):
    before = snapshot(ckpt)
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--out", ckpt, "--quiet")
    assert_clean_error(r, "already holds a run")
    assert snapshot(ckpt) == before


def test_sample_bad_inputs(ckpt, tmp_path):
    before = snapshot(ckpt)
    base = ["sample", "--ckpt", ckpt, "--max-new-tokens", "5"]
    cases = [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "-0.5"], "temperature"),
        (["--prompt", "Zebra€"], "does not know the character"),
        (["--num-samples", "0"], "num-samples"),
    ]
    for extra, match in cases:
        assert_clean_error(run_cli(*base, *extra), match)
    assert_clean_error(run_cli("sample", "--ckpt", tmp_path / "missing"), "does not exist")
    assert snapshot(ckpt) == before


def test_incomplete_and_corrupt_checkpoints(ckpt, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:200])
    assert_clean_error(run_cli("sample", "--ckpt", broken), "corrupt or truncated")
    (broken / "model.safetensors").unlink()
    assert_clean_error(run_cli("sample", "--ckpt", broken), "model.safetensors is missing")
    (broken / "config.json").unlink()
    assert_clean_error(run_cli("sample", "--ckpt", broken), "config.json is missing")


def test_resume_without_a_run(tmp_path):
    assert_clean_error(run_cli("train", "--resume", "--out", tmp_path / "x"), "cannot resume")


def test_unknown_command_and_flag():
    assert_clean_error(run_cli("trian"), "invalid choice")
    assert_clean_error(run_cli("train", "--n-layerz", "2"), "unrecognized arguments")
