"""A seventh encoding is one class and one @register: defined here, in the test, it trains,
samples, evaluates past L, is drawn by `viz`, refuses export, is offered by --help, checks
its own settings and names them in a study's list of what was held equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from minigpt import positional
from minigpt.errors import ConfigError
from minigpt.positional import PositionalEncoding, register


class Toy(PositionalEncoding):
    """score(i, j) -= 0.25 * log(1 + i - j): a made-up, parameter-free recency bias."""

    name = "toy"
    description = "a made-up logarithmic recency bias (test only)"
    where = "biases attention scores"
    picture = "bias"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.n_head > 8:
            raise ConfigError("pos 'toy' takes at most 8 heads.")

    @classmethod
    def settings_note(cls, cfg) -> str | None:
        return f"Toy slope: 0.25 for all {cfg.n_head} heads."

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (Tq, Tk)
        return (-0.25 * torch.log1p(dist)).expand(self.cfg.n_head, -1, -1)  # (nh, Tq, Tk)


@pytest.fixture
def toy():
    register(Toy)
    try:
        yield Toy
    finally:
        positional.REGISTRY.pop("toy", None)


def test_a_toy_encoding_is_one_class_and_one_register(toy, corpus: Path, tmp_path: Path
                                                      ) -> None:
    from minigpt.checkpoint import load
    from minigpt.errors import MiniGPTError
    from minigpt.generation import sample_text
    from minigpt.hf import export_hf
    from minigpt.training import train
    from minigpt.viz import draw

    out = tmp_path / "run"
    res = train(tiny_config(corpus, {"pos": "toy"}), out, progress=False)
    assert res.step == 6 and res.pos_params == 0
    model, tok, cfg, _ = load(out)
    assert cfg.model.pos == "toy" and isinstance(model.pos, Toy)
    (text,) = sample_text(model, tok, "FIRST", max_new_tokens=40, temperature=0.0)
    assert text.startswith("FIRST") and len(text) > 30  # past L = 16: the bias extrapolates
    pngs = draw(None, out, tmp_path / "pics")
    assert {p.name for p in pngs} == {"toy_bias.png", "toy_bias_distance.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    with pytest.raises(MiniGPTError, match="'toy' encoding cannot be exported"):
        export_hf(out, tmp_path / "hf")
    assert "toy" in _subcommand_help("train")


def test_a_toy_encoding_checks_its_settings_and_names_them_in_a_study(toy) -> None:
    from minigpt.config import merge, preset
    from minigpt.study import make_study
    from minigpt.study.fairness import held_equal

    with pytest.raises(ConfigError, match="at most 8 heads"):
        merge(preset("tiny"), {"pos": "toy", "n_head": 16})
    with pytest.raises(ConfigError, match="at most 8 heads"):
        make_study("quick", pos="rope,toy", model={"n_head": 16, "d_model": 128})
    study = make_study("quick", pos="rope,toy")
    verification = {"configs_differ_only_in": ["model.pos"], "shared_init_identical": True,
                    "shared_tensors": 1, "seeds_checked": study.seeds}
    study.objective.n_targets, study.objective.spans, study.objective.prompt = 8192, [0], "RO"
    lines = held_equal(study, 65, verification, jobs=1)
    assert "Toy slope: 0.25 for all 4 heads." in lines
    assert not any(line.startswith("T5 buckets") for line in lines)  # t5 is not in the study


def _subcommand_help(name: str) -> str:
    import argparse

    from minigpt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].format_help()
