"""Hugging Face interop: exported models load in transformers with the same logits and the
same greedy tokens; transformers-built GPT-2 / GPT-NeoX directories import exactly; the
tokenizers give the same ids; unsupported inputs are refused in one line (exit 2)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMALL_TEXT, run_cli, tiny_config

from minigpt.checkpoint import load
from minigpt.cli import main
from minigpt.generation import generate
from minigpt.hf import hf_tokenizer, tokenizer_from_hf_dir
from minigpt.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars on stderr

TOL = 1e-4


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf")
    (d / "corpus.txt").write_text(SMALL_TEXT * 24, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def trained(root: Path):
    """trained(name) -> a tiny minigpt checkpoint directory, trained once per module."""
    from minigpt.training import train

    specs = {
        "learned-char": ({"pos": "learned"}, {"tokenizer": "char"}),
        # no biases and the exact erf GELU: the settings GPT-2's defaults do not cover
        "rope-bpe": ({"pos": "rope", "rope_base": 500.0, "bias": False, "activation": "gelu"},
                     {"tokenizer": "bpe", "vocab_size_bpe": 300}),
        "alibi-char": ({"pos": "alibi"}, {"tokenizer": "char", "max_steps": 1}),
    }
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            model, tr = specs[name]
            out = root / name
            train(tiny_config(root / "corpus.txt", model=model, train=tr), out, progress=False,
                  log=lambda *a, **k: None)
            done[name] = out
        return done[name]

    return get


def hf_load(d: Path):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True).eval()
    t = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    return m, t


@torch.no_grad()
def max_diff(ours, theirs, vocab: int, T: int, seed: int = 0) -> float:
    ids = torch.randint(0, vocab, (3, T), generator=torch.Generator().manual_seed(seed))
    return float((ours(ids)[0] - theirs(input_ids=ids).logits).abs().max())


@torch.no_grad()
def hf_greedy(m, prompt_ids: list[int], n: int) -> list[int]:
    m.generation_config.eos_token_id = None  # compare full lengths, never stop early
    x = torch.tensor([prompt_ids])
    y = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
    return y[0].tolist()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- export ---------------------------------------------------------------------------------

def test_export_learned_is_gpt2_with_same_logits_and_greedy_tokens(trained, root, capsys):
    ck, out = trained("learned-char"), root / "hf-learned"
    assert main(["export", "--ckpt", str(ck), "--to", "hf", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "GPT2LMHeadModel" in said
    # one line says how long a sequence transformers can run (it has no sliding window)
    assert [x for x in said.splitlines() if x.startswith("note:")] == [
        "note: this learned-position model takes at most 16 tokens in transformers (prompt + "
        "max_new_tokens <= 16; past that generate() fails); minigpt sample slides its window "
        "instead."]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / f).is_file(), f
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # safetensors' 0600 too
    m, hft = hf_load(out)
    ours, tok, cfg, _ = load(ck)
    assert type(m).__name__ == "GPT2LMHeadModel"
    c = m.config
    assert (c.activation_function, c.layer_norm_epsilon, c.n_positions) == ("gelu", 1e-5, 16)
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()  # tied
    assert max_diff(ours, m, cfg.model.vocab_size, 16) < TOL
    prompt = "ALL:\n"
    assert hft(prompt)["input_ids"] == tok.encode(prompt)
    theirs = hf_greedy(m, tok.encode(prompt), 11)  # 5 + 11 = block_size tokens
    assert main(["sample", "--ckpt", str(ck), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "11"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(theirs[5:]) + "\n"
    assert hft.decode(theirs) == tok.decode(theirs)
    # the exported directory imports back to the same model and char tokenizer
    assert main(["import", "--from", "hf", str(out), "--out", str(root / "learned-back")]) == 0
    back, btok, _, _ = load(root / "learned-back")
    assert max_diff(back, m, cfg.model.vocab_size, 16) < TOL
    assert btok.fingerprint() == tok.fingerprint()
    # the docs' example runs as written on this 16-token model (it asks for 40 new tokens)
    doc = (ROOT / "docs" / "hf.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    capsys.readouterr()
    exec(example.replace('"hf/small"', repr(str(out))), {})
    printed = capsys.readouterr().out
    assert printed.startswith("ROMEO:") and len(printed) == 16 + 1  # L tokens and a newline
    # exporting again into the same directory is refused
    capsys.readouterr()
    assert main(["export", "--ckpt", str(ck), "--out", str(out)]) == 2
    assert "already holds" in one_error_line(capsys)


def test_export_rope_is_gpt_neox_and_matches_past_block_size(trained, root, capsys):
    ck, out = trained("rope-bpe"), root / "hf-rope"
    assert main(["export", "--ckpt", str(ck), "--out", str(out)]) == 0
    assert "note:" not in capsys.readouterr().out  # rope has no length limit there
    m, hft = hf_load(out)
    ours, tok, cfg, _ = load(ck)
    assert type(m).__name__ == "GPTNeoXForCausalLM"
    c = m.config
    assert c.use_parallel_residual is False and c.tie_word_embeddings is True
    assert c.hidden_act == "gelu"  # our exact-erf GELU
    qkv = m.gpt_neox.layers[0].attention.query_key_value
    assert float(qkv.bias.detach().abs().max()) == 0.0  # bias=False -> zero biases
    rope = getattr(c, "rope_parameters", None) or {}
    assert rope.get("partial_rotary_factor", getattr(c, "rotary_pct", None)) == 1.0
    assert rope.get("rope_theta", getattr(c, "rotary_emb_base", None)) == 500.0
    assert max_diff(ours, m, cfg.model.vocab_size, 16) < TOL
    assert max_diff(ours, m, cfg.model.vocab_size, 40, seed=1) < TOL  # rope extrapolates
    text = SMALL_TEXT[:200]
    assert hft(text)["input_ids"] == tok.encode(text)
    assert hft.pad_token == "<pad>" and hft.eos_token == "<eos>"
    prompt = tok.encode("FIRST CITIZEN:\n")
    theirs = hf_greedy(m, prompt, 24)  # well past block_size 16
    mine = generate(ours, torch.tensor([prompt]), 24, temperature=0, dtype="float32")[0].tolist()
    assert mine == theirs


@pytest.mark.parametrize("pos", ["alibi"])
def test_export_refuses_encodings_without_a_transformers_twin(trained, root, capsys, pos):
    ck = trained(f"{pos}-char")
    capsys.readouterr()
    assert main(["export", "--ckpt", str(ck), "--out", str(root / "never")]) == 2
    err = one_error_line(capsys)
    assert "'learned'" in err and "'rope'" in err and pos in err
    assert not (root / "never").exists()


def test_export_without_transformers_says_how_to_install(trained, root, capsys, monkeypatch):
    ck = trained("learned-char")
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    assert main(["export", "--ckpt", str(ck), "--out", str(root / "never2")]) == 2
    assert "pip install 'minigpt[hf]'" in one_error_line(capsys)


# --- tokenizers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def val_text() -> str:
    from minigpt.data import shakespeare_texts

    return shakespeare_texts()["val"][0][1][:4000]


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_tokenizer_export_gives_the_same_ids_and_imports_back(kind, val_text, tmp_path):
    cls = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}[kind]
    tok = cls.train([val_text], vocab_size=300)
    ids = tok.encode(val_text)
    hft = hf_tokenizer(tok)
    assert hft(val_text)["input_ids"] == ids
    assert hft.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    if kind == "char":
        assert "\n" in val_text and " " in val_text  # whitespace is kept as tokens
    if kind == "word":  # unknown words are <unk>, as ours
        odd = "an unheard-of word: zyzzyva"
        assert hft(odd)["input_ids"] == tok.encode(odd) and tok.unk_id in tok.encode(odd)
    hft.save_pretrained(str(tmp_path))
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again(val_text)["input_ids"] == ids
    back = tokenizer_from_hf_dir(tmp_path, tok.vocab_size)
    assert back.kind == kind and back.fingerprint() == tok.fingerprint()


# --- import ---------------------------------------------------------------------------------

def gpt2_style_tokenizer():
    """A small byte-level BPE with GPT-2's only special token (no <pad>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([SMALL_TEXT], trainers.BpeTrainer(
        vocab_size=290, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>")


def save_hf(model, tok, d: Path) -> Path:
    with torch.no_grad():  # random biases and norms, so every tensor's mapping is exercised
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (0 if "bias" in name else 1))
    model.save_pretrained(str(d), safe_serialization=True)
    tok.save_pretrained(str(d))
    return d


def test_import_gpt2_exactly_then_sample_finetune_and_export_back(root, capsys):
    hft = gpt2_style_tokenizer()
    V = len(hft)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V + 3, n_positions=32, n_embd=32, n_layer=2,
                                  n_head=2, bos_token_id=None, eos_token_id=None)
    src = save_hf(transformers.GPT2LMHeadModel(cfg).eval(), hft, root / "gpt2-src")
    m, _ = hf_load(src)
    ck = root / "gpt2-ck"
    assert main(["import", "--from", "hf", str(src), "--out", str(ck)]) == 0
    assert "imported GPT2LMHeadModel" in capsys.readouterr().out
    ours, tok, rc, _ = load(ck)
    assert (rc.model.pos, rc.model.block_size, rc.model.vocab_size) == ("learned", 32, V + 3)
    assert tok.kind == "bpe" and tok.pad_id == V  # <pad> added after the existing tokens
    assert max_diff(ours, m, V + 3, 32) < TOL
    text = SMALL_TEXT[:300]
    assert tok.encode(text) == hft(text)["input_ids"]
    prompt = tok.encode("Speak, speak.")
    assert generate(ours, torch.tensor([prompt]), 12, temperature=0,
                    dtype="float32")[0].tolist() == \
        hf_greedy(m, prompt, 12)
    assert main(["sample", "--ckpt", str(ck), "--prompt", "Speak", "--temperature", "0",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("Speak")
    ft = root / "gpt2-ft"
    assert main(["train", "--init-from", str(ck), "--data", str(root / "corpus.txt"), "--out",
                 str(ft), "--max-steps", "2", "--eval-interval", "2", "--eval-iters", "1",
                 "--batch-size", "2", "--sample-tokens", "0", "--quiet"]) == 0
    assert (ft / "model.safetensors").is_file()
    # and back out again: the round trip is exact
    back = root / "gpt2-back"
    assert main(["export", "--ckpt", str(ck), "--out", str(back)]) == 0
    m2, _ = hf_load(back)
    assert max_diff(m2, m, V + 3, 32) < TOL
    # importing over an existing run is refused
    capsys.readouterr()
    assert main(["import", "--from", "hf", str(src), "--out", str(ck)]) == 2
    assert "already holds" in one_error_line(capsys)


def test_import_gpt_neox_exactly(root, capsys):
    hft = gpt2_style_tokenizer()
    V = len(hft)
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=16, use_parallel_residual=False,
        rotary_pct=1.0, rotary_emb_base=1000.0, tie_word_embeddings=True, hidden_act="gelu_new")
    src = save_hf(transformers.GPTNeoXForCausalLM(cfg).eval(), hft, root / "neox-src")
    m, _ = hf_load(src)
    ck = root / "neox-ck"
    assert main(["import", "--from", "hf", str(src), "--out", str(ck)]) == 0
    ours, tok, rc, _ = load(ck)
    assert (rc.model.pos, rc.model.rope_base, rc.model.d_ff) == ("rope", 1000.0, 48)
    assert tok.pad_id is None  # no <pad> in the tokenizer and no free row in the model
    assert max_diff(ours, m, V, 24) < TOL
    back = root / "neox-back"
    assert main(["export", "--ckpt", str(ck), "--out", str(back)]) == 0
    m2, _ = hf_load(back)
    assert max_diff(m2, m, V, 24) < TOL


def test_import_refusals_are_one_line(root, capsys, tmp_path):
    hft = gpt2_style_tokenizer()
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"not unpickled")
    untied = save_hf(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(hft), n_positions=8, n_embd=8, n_layer=1, n_head=2,
        tie_word_embeddings=False)), hft, tmp_path / "untied")
    pythia = save_hf(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=len(hft), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, tie_word_embeddings=True)), hft, tmp_path / "pythia")
    cases = {llama: "GPT-2", pickled: "safetensors", untied: "ties",
             pythia: "parallel residual", tmp_path / "missing": "not a directory",
             tmp_path: "no config.json"}
    capsys.readouterr()
    for src, words in cases.items():
        out = tmp_path / "out"
        assert main(["import", "--from", "hf", str(src), "--out", str(out)]) == 2, src
        assert words in one_error_line(capsys), src
        assert not (out / "config.json").exists()


def test_cli_import_of_a_missing_dir_exits_2_with_one_line(tmp_path):
    r = run_cli("import", "--from", "hf", tmp_path / "nope", "--out", tmp_path / "ck")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "not a directory" in r.stderr
