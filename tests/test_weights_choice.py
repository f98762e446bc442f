"""`--dtype auto` for sampling: the weights format measured fastest here, cached, and shown."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from minigpt import weights_choice
from minigpt.config import ModelConfig
from minigpt.generation import generate
from minigpt.inference import Int8Linear, sampling_model
from minigpt.model import GPT
from minigpt.tokenizers import CharTokenizer

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / weights_choice.FILE


def _model(d_model: int = 64) -> GPT:
    cfg = ModelConfig(vocab_size=11, block_size=32, n_layer=2, n_head=2, d_model=d_model,
                      pos="rope")
    return GPT(cfg, seed=0).eval()


def _pretend(cache_file, cfg: ModelConfig, ms: dict[str, float]) -> None:
    """Write the cache as if these figures had been measured here for these shapes."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"schema": weights_choice.SCHEMA, "entries": {
        weights_choice.key(cfg, CPU): {"ms": ms}}}))


def test_first_use_measures_every_format_and_caches_it(cache):
    model = _model()
    assert not cache.exists()
    first = weights_choice.choose(model.cfg, CPU)
    assert not first.cached and first.path == cache
    # every format whose kernel runs on this CPU (PyTorch's int8 kernel runs on CPUs)
    assert set(first.ms) == set(weights_choice.FORMATS) and all(v > 0 for v in first.ms.values())
    stored = json.loads(cache.read_text())
    assert stored["schema"] == weights_choice.SCHEMA
    again = weights_choice.choose(model.cfg, CPU)
    assert again.cached and again.ms == first.ms  # read back, not measured again
    # the choice is the fastest of the figures
    m, info = sampling_model(model, "auto")
    assert info.format == first.fastest() and info.choice.ms == first.ms


def test_the_key_holds_the_machine_threads_torch_and_shapes(cache):
    a, b = _model(64), _model(32)
    ka = weights_choice.key(a.cfg, CPU)
    assert ka != weights_choice.key(b.cfg, CPU)
    entry = json.loads(ka)
    assert entry["threads"] == torch.get_num_threads() and entry["torch"] == torch.__version__
    assert entry["cpu"] and "isa" in entry and entry["d_model"] == 64
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert weights_choice.key(a.cfg, CPU) != ka
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fastest,dtype,quantized", [
    ("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
    ("int8", torch.bfloat16, True), ("int8-fp32", torch.float32, True)])
def test_auto_takes_whichever_format_measured_fastest(cache, fastest, dtype, quantized):
    model = _model()
    ms = {"fp32": 2.0, "bf16": 3.0, "int8": 4.0, "int8-fp32": 5.0} | {fastest: 0.5}
    _pretend(cache, model.cfg, ms)
    m, info = sampling_model(model, "auto")
    assert info.format == fastest and info.choice.cached
    assert m.tok_emb.weight.dtype == dtype
    assert isinstance(m.lm_head, Int8Linear) == quantized
    assert f"{fastest} 0.5" in info.describe() and "auto: fastest here" in info.describe()
    # --quantize int8 with auto picks the faster activations of the two int8 formats
    _, q = sampling_model(model, "auto", "int8")
    assert q.format == ("int8-fp32" if fastest == "int8-fp32" else
                        "int8" if ms["int8"] < ms["int8-fp32"] else "int8-fp32")


def test_float32_stays_exact_whatever_was_measured(cache):
    model = _model()
    _pretend(cache, model.cfg, {"fp32": 9.0, "bf16": 1.0, "int8": 0.5, "int8-fp32": 2.0})
    same, info = sampling_model(model, "float32")
    assert same is model and info.format == "fp32" and info.choice is None
    ids = torch.tensor([[1, 2, 3]])
    out = generate(model, ids, 8, temperature=0, dtype="float32")
    x = ids
    with torch.no_grad():
        for _ in range(8):
            x = torch.cat((x, model(x)[0][:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, x)


def test_a_broken_cache_file_is_measured_around(cache):
    model = _model()
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    c = weights_choice.choose(model.cfg, CPU)
    assert not c.cached and set(c.ms) == set(weights_choice.FORMATS)
    assert json.loads(cache.read_text())["schema"] == weights_choice.SCHEMA  # rewritten
    cache.write_text(json.dumps({"schema": weights_choice.SCHEMA, "entries": {
        weights_choice.key(model.cfg, CPU): {"ms": {"fp32": -1}}}}))  # nonsense figures
    assert not weights_choice.choose(model.cfg, CPU).cached


def test_int8_slower_than_bf16_is_said_in_one_line(cache, tmp_path):
    from minigpt.checkpoint import save_weights, write_config
    from minigpt.config import RunConfig

    tok = CharTokenizer.train(["abcdefgh \n"])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2,
                      d_model=64, pos="rope")
    model = GPT(cfg, seed=0).eval()
    ck = tmp_path / "ck"
    ck.mkdir()
    write_config(ck, RunConfig(model=cfg), 0)
    save_weights(ck / "model.safetensors", model, 0)
    tok.save(ck / "tokenizer.json")
    base = ["sample", "--ckpt", ck, "--prompt", "abc", "--temperature", "0",
            "--max-new-tokens", "5", "--quantize", "int8"]

    def pretend(ms: dict[str, float]) -> None:  # for the CLI's thread count
        _pretend(cache, cfg, ms)
        raw = json.loads(cache.read_text())
        (k, v), = raw["entries"].items()
        entry = json.loads(k)
        raw["entries"] = {json.dumps(entry | {"threads": t}, sort_keys=True): v
                          for t in range(1, 65)}
        cache.write_text(json.dumps(raw))

    pretend({"fp32": 2.0, "bf16": 1.0, "int8": 1.5, "int8-fp32": 3.0})
    slow = run_cli(*base)
    assert slow.returncode == 0, slow.stderr
    warn = [ln for ln in slow.stderr.splitlines() if ln.startswith("warning: int8")]
    assert warn == ["warning: int8 weights measure slower here than bfloat16 (1.5 vs 1 ms of "
                    "matrix products per token); --dtype auto without --quantize picks the "
                    "fastest."]
    pretend({"fp32": 2.0, "bf16": 1.0, "int8": 0.5, "int8-fp32": 3.0})
    fast = run_cli(*base)
    assert fast.returncode == 0 and "warning: int8" not in fast.stderr
    assert "int8 0.5, bf16 1, fp32 2, int8-fp32 3 ms" in fast.stderr  # the figures, shown
    auto = run_cli(*base[:-2])
    assert "sampling with int8 weights" in auto.stderr and "(auto: fastest here" in auto.stderr
