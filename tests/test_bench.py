"""`minigpt bench`: the table and bench.json hold every measure, for every contender."""

from __future__ import annotations

import json

import torch
from conftest import run_cli

from minigpt.bench import flops_per_token, matmul_peak
from minigpt.config import ModelConfig


def test_bench_vs_hf_writes_every_measure(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--preset", "tiny", "--vs", "hf", "--reps", "1", "--gen-tokens", "4",
                "--dtype", "float32", "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["dtype"] == "float32" and res["threads"] == 1 and res["preset"] == "tiny"
    assert res["peak_flops"] > 1e8
    for key in ("train_tokens_per_s", "eval_tokens_per_s", "train_mfu"):
        assert set(res[key]) == {"minigpt", "hf"} and all(v > 0 for v in res[key].values())
    assert 0 < res["train_mfu"]["minigpt"] < 1
    gen = res["generate_tokens_per_s"]
    assert set(gen) == {"batch1_cache", "batch1_nocache", "batch8_cache", "batch8_nocache"}
    rows = {"fp32", "bf16", "int8", "hf"}
    assert all(rows <= set(g) and all(g[r] > 0 for r in rows) and g["new_tokens"] == 4
               for g in gen.values())
    for k in ("batch1_cache", "batch8_cache"):  # every sampler row against its own limit
        g = gen[k]
        assert {"fp32_limit", "bf16_limit", "int8_limit"} <= set(g)
        assert set(g["percent_of_limit"]) == rows
        assert g["percent_of_limit"]["int8"] == 100 * g["int8"] / g["int8_limit"]
        assert g["percent_of_limit"]["hf"] == 100 * g["hf"] / g["fp32_limit"]
    # the default is the format auto measured fastest, and the bench shows the figures
    wc = res["weights_choice"]
    assert res["default_sampler"] == ("int8" if wc["default"].startswith("int8") else
                                      wc["default"])
    assert wc["default"] == min(wc["ms_per_token"], key=wc["ms_per_token"].get)
    assert f"auto chose {wc['default']}: matrix products per token" in r.stdout
    assert "int8 weights (torch._weight_int8pack_mm)" in res["samplers"]["int8"]
    ratios = res["ratio_vs_hf"]
    assert {"batch1_cache_default", "batch1_cache_int8", "batch1_cache_bf16", "eval"} <= set(ratios)
    assert ratios["train"] == res["train_tokens_per_s"]["minigpt"] / res["train_tokens_per_s"]["hf"]
    assert ratios["batch1_cache_int8"] == gen["batch1_cache"]["int8"] / gen["batch1_cache"]["hf"]
    for line in ("train tokens/s", "train MFU", "eval tokens/s", "batch1_cache (4 new)",
                 "% limit", "int8: int8 weights"):
        assert line in r.stdout
    # the limit column of the batch-1 int8 row prints the measured limit
    int8_line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("int8 "))
    assert f"{gen['batch1_cache']['int8_limit']:,.0f}" in int8_line
    assert "1 threads" in r.stdout
    # transformers' advice to its own API users is not shown (loss_type, attention_mask)
    assert "[transformers]" not in r.stderr and "attention_mask" not in r.stderr + r.stdout


def test_bench_sampling_only_skips_training_rows(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--preset", "tiny", "--sampling-only", "--reps", "1", "--gen-tokens",
                "3", "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["sampling_only"] and "train_tokens_per_s" not in res
    assert set(res["generate_tokens_per_s"]) == {"batch1_cache", "batch8_cache"}
    assert "train tokens/s" not in r.stdout and "% limit" in r.stdout
    assert "ratio_vs_hf" not in res and "hf" not in res["generate_tokens_per_s"]["batch1_cache"]


def test_flops_per_token_formula():
    cfg = ModelConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128)
    assert flops_per_token(cfg, 1000) == 6 * 1000 + 12 * 4 * 128 * 64


def test_matmul_peak_is_plausible():
    peak = matmul_peak(torch.device("cpu"), torch.float32, n=256, reps=2)
    assert 1e8 < peak < 1e14


def test_bench_bad_input_is_one_line(tmp_path):
    r = run_cli("bench", "--preset", "tiny", "--threads", "0", "--out", tmp_path / "b.json")
    assert r.returncode == 2 and "threads" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.json").exists()


def test_default_char_vocabulary_is_the_embedded_corpus():
    """bench's "shakespeare chars" vocabulary is the one `train --data shakespeare` builds
    (77: the training plays' characters and <pad>), not nanoGPT's 65."""
    from minigpt.bench import _bench_config
    from minigpt.data import shakespeare_texts
    from minigpt.tokenizers import train_tokenizer

    tok = train_tokenizer("char", [t for _, t in shakespeare_texts()["train"]])
    threads = torch.get_num_threads()
    cfg = _bench_config("tiny", "float32", "off", "cpu", None, None, 4, 1, None)
    assert torch.get_num_threads() == threads
    assert cfg.model.vocab_size == tok.vocab_size == 77
