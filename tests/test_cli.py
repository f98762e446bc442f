"""The command line's help and flags (cli/, cli/options.py): real metavars, defaults and
choices taken from the configs, a parser that loads no torch, one --vocab-size flag."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import TINY_ARGS, run_cli
from minigpt.cli import build_parser
from minigpt.config import ModelConfig, TrainConfig, choices
from minigpt.errors import ConfigError
from minigpt.positional import REGISTRY


def test_help_has_real_metavars_defaults_and_choices():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sample", "compare", "viz", "bench", "export", "import"} <= set(sub)
    texts = {c: p.format_help() for c, p in sub.items()}  # what `minigpt C --help` prints
    r = run_cli("train", "--help")
    assert r.returncode == 0 and " ".join(r.stdout.split()) == " ".join(texts["train"].split())
    for c, text in texts.items():
        assert "CFG_" not in text and "default None" not in text, c
    train_h = " ".join(texts["train"].split())
    assert "--d-ff N feed-forward width (default: 4 x d_model)" in train_h
    assert "--lr FLOAT peak learning rate, reached after warm-up (default: 0.001)" in train_h
    for flag, cls, name in (("--activation", ModelConfig, "activation"),
                            ("--tokenizer", TrainConfig, "tokenizer"),
                            ("--dtype", TrainConfig, "dtype")):
        assert f"{flag} {{{','.join(choices(cls, name))}}}" in train_h  # the config's choices
    assert f"--pos NAME positional encoding: {', '.join(REGISTRY)} (default: learned)" in train_h
    assert "word tokenizer only" in train_h and "rope only" in train_h
    assert "CPUs with native bf16" in train_h
    compare_h = " ".join(texts["compare"].split())
    assert "--max-steps N optimizer steps to train for (default: 800)" in compare_h  # quick
    assert "--config" not in compare_h
    sample_h = " ".join(texts["sample"].split())
    assert "(default: 0.8)" in sample_h and "(default: 200)" in sample_h


def test_building_the_parser_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys; from minigpt.cli import build_parser; "
                        "build_parser(); print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr  # `minigpt --help` stays fast


def test_every_option_has_a_metavar_a_person_would_write():
    allowed = {"N", "FLOAT", "NAME", "PATH", "TEXT", "DEVICE", "P", "STEP", "T,T,...",
               "A,B,...", "LIST"}
    sub = build_parser()._subparsers._group_actions[0].choices
    for name, p in sub.items():
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or action.choices:
                continue  # flags without a value, and choices, which argparse lists
            assert action.metavar in allowed, (name, action.option_strings, action.metavar)


def test_help_choices_are_the_configs_choices():
    """One source: every choice the train parser offers is what the config accepts."""
    p = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in p._actions:
        if action.dest.startswith("cfg_") and action.choices:
            name = action.dest[4:]
            cls = ModelConfig if name in ModelConfig.__dataclass_fields__ else TrainConfig
            assert tuple(action.choices) == tuple(choices(cls, name))


def test_one_vocab_size_flag_means_what_it_says_per_tokenizer(corpus, tmp_path):
    from minigpt.cli.options import build_config

    def cfg(*args: str):
        return build_config(build_parser().parse_args(["train", *args]))

    assert cfg("--tokenizer", "bpe", "--vocab-size", "300").train.vocab_size_bpe == 300
    assert cfg("--tokenizer", "word", "--vocab-size", "300").train.max_vocab == 300
    with pytest.raises(ConfigError, match="char tokenizer .* takes no vocabulary size"):
        cfg("--vocab-size", "300")
    r = run_cli("train", *TINY_ARGS, "--tokenizer", "bpe", "--vocab-size", "100", "--data", corpus,
                "--out", tmp_path / "x")
    assert r.returncode == 2 and "--vocab-size must be between 260" in r.stderr
    assert "vocab_size_bpe" not in r.stderr
    # BPE on a tiny corpus cannot reach 5000 tokens: it says so
    r = run_cli("train", *TINY_ARGS, "--tokenizer", "bpe", "--vocab-size", "5000", "--data", corpus,
                "--out", tmp_path / "b", "--max-steps", "1", "--quiet")  # a note, not progress
    assert r.returncode == 0, r.stderr
    m = re.search(r"made (\d+) tokens, fewer than the 5000 asked for", r.stdout)
    assert m and int(m.group(1)) < 5000


def test_checkpoint_and_viz_flags_come_from_one_declaration():
    """--which is the same option on every command that reads a checkpoint, and viz's model
    flags are ModelConfig's settings: their help, type and the small preset's default."""
    import dataclasses

    from minigpt.config import VIZ_SETTINGS, WHICH, field_types, preset_value

    sub = build_parser()._subparsers._group_actions[0].choices

    def action(cmd: str, flag: str):
        return next(a for a in sub[cmd]._actions if flag in a.option_strings)

    readers = [c for c, p in sub.items() if any("--which" in a.option_strings for a in p._actions)]
    assert set(readers) == {"sample", "serve", "export", "viz"}
    assert all(tuple(action(c, "--which").choices) == WHICH for c in readers)
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(ModelConfig)}
    types = field_types(ModelConfig)
    for name in VIZ_SETTINGS:
        a = action("viz", "--" + name.replace("_", "-"))
        assert a.type is types[name] and a.help.startswith(helps[name].removeprefix("rope only: "))
        shown = preset_value("small", "model", name)
        assert f"{shown:g} in small" in a.help if isinstance(shown, float) else \
            f"{shown} in small" in a.help
