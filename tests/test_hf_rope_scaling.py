"""Context-extension methods leave for transformers as its `rope_parameters` and come back:
the exported GPT-NeoX gives minigpt's logits past the trained length for each method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SMALL_TEXT, tiny_config

from minigpt.checkpoint import load, read_config
from minigpt.cli import main

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()

TOL = 1e-4  # fp32 rounding of logits of size ~1-10
HF_TYPE = {"linear": "linear", "ntk": "default", "dynamic": "dynamic", "yarn": "yarn",
           "llama3": "llama3"}


@pytest.fixture(scope="module")
def rope_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from minigpt.training import train

    d = tmp_path_factory.mktemp("hfrope")
    (d / "corpus.txt").write_text(SMALL_TEXT * 24, encoding="utf-8")
    out = d / "rope"
    train(tiny_config(d / "corpus.txt", {"pos": "rope", "d_model": 32}), out, progress=False,
          log=lambda *a, **k: None)
    return out


@pytest.mark.parametrize("method", list(HF_TYPE))
def test_each_method_exports_with_the_same_logits_past_L_and_imports_back(
        rope_ckpt, tmp_path, method):
    ext = {"rope_scaling": method, "rope_factor": 4.0}
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", str(rope_ckpt), "--out", str(out), "--rope-scaling",
                 method, "--rope-factor", "4"]) == 0
    ours, _, cfg, _ = load(rope_ckpt, extension=ext)
    L, V = cfg.model.block_size, cfg.model.vocab_size
    for T in (L, 2 * L, 4 * L):  # a fresh model per length: transformers' dynamic only grows
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            str(out), local_files_only=True).eval()
        rope = theirs.config.rope_parameters
        assert rope["rope_type"] == HF_TYPE[method]
        ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            diff = (ours(ids)[0] - theirs(input_ids=ids).logits).abs().max()
        assert float(diff) < TOL, (method, T, float(diff))
    back = tmp_path / "back"
    assert main(["import", "--from", "hf", str(out), "--out", str(back)]) == 0
    got, _ = read_config(back)
    m = got.model
    assert (m.rope_scaling, m.rope_factor, m.rope_original_length, m.rope_base) == \
        (method, 4.0, L, 10000.0)
    imported, _, _, _ = load(back)
    ids = torch.randint(0, V, (1, 4 * L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(imported(ids)[0], ours(ids)[0], atol=1e-5)


def test_import_refuses_yarn_settings_minigpt_does_not_compute(rope_ckpt, tmp_path, capsys):
    import json

    out = tmp_path / "hf"
    assert main(["export", "--ckpt", str(rope_ckpt), "--out", str(out), "--rope-scaling",
                 "yarn", "--rope-factor", "4"]) == 0
    raw = json.loads((out / "config.json").read_text())
    key = "rope_parameters" if "rope_parameters" in raw else "rope_scaling"
    raw[key]["beta_fast"] = 16
    (out / "config.json").write_text(json.dumps(raw))
    capsys.readouterr()
    assert main(["import", "--from", "hf", str(out), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "yarn beta_fast 16" in err and "uses 32" in err
