"""Configs (config.py, and the flags and TOML files cli/options.py builds them from):
choices from Literal types, errors that name the setting, presets of both families, and
property tests: any parsed input is a valid config or a ConfigError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run_cli, values
from minigpt.config import ModelConfig, PRESETS, RunConfig, TrainConfig, load_toml, merge, preset
from minigpt.errors import ConfigError, MiniGPTError


MODEL_FIELDS = [f for f in ModelConfig.__dataclass_fields__]


TRAIN_FIELDS = [f for f in TrainConfig.__dataclass_fields__]


def section(names: list[str]):
    keys = st.one_of(st.sampled_from(names), st.text(max_size=6))
    return st.one_of(st.dictionaries(keys, values, max_size=6), values)


config_dicts = st.one_of(
    st.fixed_dictionaries({}, optional={
        "model": section(MODEL_FIELDS), "train": section(TRAIN_FIELDS),
        "preset": st.one_of(st.sampled_from(list(PRESETS)), values)}),
    st.dictionaries(st.text(max_size=6), values, max_size=3), values)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(config_dicts)
def test_config_parsing_gives_a_valid_config_or_a_config_error(d):
    try:
        cfg = RunConfig.from_dict(d)
    except ConfigError:
        return
    m, t = cfg.model, cfg.train
    for name, typ in (("n_layer", int), ("d_model", int), ("block_size", int), ("pos", str)):
        assert type(getattr(m, name)) is typ
    assert type(t.lr) is float and m.d_model % m.n_head == 0 and 0 < t.lr <= 10
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # round trip
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # through JSON


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(
    lambda b: b.decode("latin-1"))))
def test_config_files_give_a_table_or_a_config_error(tmp_path_factory, text):
    p = tmp_path_factory.getbasetemp() / "fuzz.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        d = load_toml(p)
    except ConfigError:
        return
    assert isinstance(d, dict)
    try:
        RunConfig.from_dict(d)
    except ConfigError:
        pass


def test_train_takes_study_presets_and_errors_list_both_families():
    quick = preset("quick")
    assert (quick.train.max_steps, quick.train.batch_size, quick.train.lr) == (800, 16, 2e-3)
    r = run_cli("train", "--preset", "huge", "--out", "/nonexistent/x")
    assert r.returncode == 2 and "model presets tiny, small" in r.stderr
    assert "study presets" in r.stderr and "quick, full" in r.stderr
    r = run_cli("compare", "--preset", "small", "--out", "/nonexistent/x")
    assert r.returncode == 2 and "compare takes a study preset, not 'small'" in r.stderr
    assert "model presets tiny, small" in r.stderr


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


def test_merge_config_validation_names_the_field():
    with pytest.raises(MiniGPTError, match="d_model"):
        merge(preset("tiny"), {"d_model": 30, "n_head": 4}, None)
    with pytest.raises(MiniGPTError, match="dropout"):
        merge(preset("tiny"), {"dropout": 1.0}, None)
