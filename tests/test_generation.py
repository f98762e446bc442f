"""Sampling: the kept sets of top-k/top-p, greedy, seeds, and the cache."""

from __future__ import annotations

import math

import pytest
import torch

from minigpt.config import ModelConfig
from minigpt.errors import MiniGPTError
from minigpt.generation import filter_logits, generate, sample_text, stream_text
from minigpt.model import GPT
from minigpt.tokenizers import CharTokenizer


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def logp(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_k_keeps_k_most_likely_and_ties():
    assert kept(filter_logits(logp(0.1, 0.5, 0.15, 0.25), top_k=2)) == {1, 3}
    assert kept(filter_logits(torch.tensor([[1.0, 2.0, 2.0, 0.5]]), top_k=2)) == {1, 2}
    assert kept(filter_logits(torch.tensor([[1.0, 2.0, 2.0, 0.5]]), top_k=1)) == {1, 2}  # tie
    assert kept(filter_logits(logp(0.5, 0.5), top_k=10)) == {0, 1}


def test_top_p_keeps_smallest_set_reaching_p():
    d = logp(0.05, 0.5, 0.15, 0.3)
    assert kept(filter_logits(d, top_p=0.5)) == {1}
    assert kept(filter_logits(d, top_p=0.79)) == {1, 3}
    assert kept(filter_logits(d, top_p=0.81)) == {1, 3, 2}
    assert kept(filter_logits(d, top_p=1.0)) == {0, 1, 2, 3}
    assert kept(filter_logits(d, top_p=0.01)) == {1}  # never empty


def test_matches_hugging_face_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randn(3, 40, generator=g) * 3
        for k in (1, 5, 17):
            ours = filter_logits(scores, top_k=k)
            assert torch.equal(ours, TopKLogitsWarper(top_k=k)(None, scores))
        for p in (0.1, 0.5, 0.9, 0.99):
            ours = filter_logits(scores, top_p=p)
            assert torch.equal(ours, TopPLogitsWarper(top_p=p)(None, scores))


def test_bad_sampling_settings():
    with pytest.raises(MiniGPTError, match="top_p"):
        sample_text(*_model_and_tok(), "a", top_p=1.5)
    with pytest.raises(MiniGPTError, match="temperature"):
        sample_text(*_model_and_tok(), "a", temperature=-1)


def _model_and_tok(pos: str = "rope", block: int = 16):
    tok = CharTokenizer.train(["abcdefgh \n"])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=2, n_head=2,
                      d_model=16, pos=pos)
    return GPT(cfg, seed=0).eval(), tok


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "t5", "sinusoidal", "nope"])
def test_cached_and_uncached_generation_agree(pos):
    model, _ = _model_and_tok(pos, block=12)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    for temperature in (0.0, 1.0):
        outs = []
        for use_cache in (True, False):
            g = torch.Generator().manual_seed(4)
            outs.append(generate(model, prompt, 20, temperature=temperature, top_k=5,
                                 generator=g, use_cache=use_cache))
        assert torch.equal(outs[0], outs[1]), (pos, temperature)
        assert outs[0].shape == (1, 25)


def test_same_seed_same_text_and_greedy_is_deterministic():
    model, tok = _model_and_tok()
    a = sample_text(model, tok, "abc", max_new_tokens=30, temperature=1.0, seed=11)
    b = sample_text(model, tok, "abc", max_new_tokens=30, temperature=1.0, seed=11)
    c = sample_text(model, tok, "abc", max_new_tokens=30, temperature=1.0, seed=12)
    assert a == b and a != c and a[0].startswith("abc")
    g1 = sample_text(model, tok, "abc", max_new_tokens=30, temperature=0, seed=1)
    g2 = sample_text(model, tok, "abc", max_new_tokens=30, temperature=0, seed=2)
    assert g1 == g2


def test_long_prompt_for_learned_keeps_last_block_with_warning():
    model, tok = _model_and_tok("learned", block=8)
    warnings = []
    out = sample_text(model, tok, "abcdefgh" * 3, max_new_tokens=5, temperature=0,
                      warn=warnings.append)
    assert len(warnings) == 1 and "last 8" in warnings[0]
    assert len(out[0]) == 24 + 5
    # the continuation depends only on the last 8 prompt tokens
    same = sample_text(model, tok, "abcdefgh", max_new_tokens=5, temperature=0)
    assert out[0][-5:] == same[0][-5:]


def test_unknown_prompt_character_is_a_clear_error():
    model, tok = _model_and_tok()
    with pytest.raises(MiniGPTError, match="does not know the character"):
        sample_text(model, tok, "xyz")


def test_stream_text_yields_the_text_sample_text_returns_and_prints_nothing(capsys):
    model, tok = _model_and_tok()
    kw = dict(max_new_tokens=25, temperature=1.0, top_k=5, seed=3, num_samples=3)
    pieces = stream_text(model, tok, "abc", **kw)
    joined = ["", "", ""]
    for i, text in pieces:
        joined[i] += text
    assert joined == sample_text(model, tok, "abc", **kw)
    assert all(t.startswith("abc") and len(t) > 20 for t in joined) and len(set(joined)) == 3
    assert capsys.readouterr() == ("", "")  # the library yields; only the CLI prints


def test_stream_text_checks_everything_before_the_first_piece():
    model, tok = _model_and_tok()
    for bad, match in (({"temperature": -1}, "temperature"), ({"num_samples": 0}, "num_samples"),
                       ({"top_k": -2}, "top_k")):
        with pytest.raises(MiniGPTError, match=match):
            stream_text(model, tok, "abc", **bad)  # raises on the call, not on iteration


def test_a_decoding_checks_when_built_and_runs_once():
    from minigpt.generation import Decoding

    model, _ = _model_and_tok()
    with pytest.raises(MiniGPTError, match="top_p"):
        Decoding(model, torch.tensor([[1, 2]]), 5, top_p=0)
    steps = Decoding(model, torch.tensor([[1, 2]]), 5, temperature=0)
    assert len([nxt for nxt, _ in steps]) == 5 and steps.ids.shape == (1, 7)
    with pytest.raises(RuntimeError, match="runs once"):
        next(iter(steps))


def test_generation_leaves_the_callers_training_mode_alone():
    model, tok = _model_and_tok()
    model.train()
    generate(model, torch.tensor([[1, 2]]), 3, dtype="float32")
    sample_text(model, tok, "ab", max_new_tokens=3, dtype="float32")
    assert model.training
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
def test_window_limits_what_the_model_sees(pos):
    """With `window` every model sees only its last `window` tokens: cached and uncached
    agree, and the tokens equal those of a loop that re-runs the last `window` ids."""
    model, _ = _model_and_tok(pos, block=12)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    outs = [generate(model, prompt, 15, temperature=1.0, window=6, dtype="float32",
                     generator=torch.Generator().manual_seed(9), use_cache=c)
            for c in (True, False)]
    assert torch.equal(outs[0], outs[1])
    g, idx = torch.Generator().manual_seed(9), prompt[:, -6:]
    with torch.no_grad():
        for _ in range(15):
            logits, _ = model(idx[:, -6:], last_only=True)
            nxt = torch.multinomial(logits[:, -1].float().softmax(-1), 1, generator=g)
            idx = torch.cat((idx, nxt), 1)
    assert torch.equal(outs[0], idx)


WORDS_TEXT = ("The encoding adds a position to every token. The model reads the encoding, "
              "and the encoding tells it where each word is.\n") * 4


def _trained(kind: str):
    from minigpt.tokenizers import train_tokenizer

    tok = train_tokenizer(kind, [WORDS_TEXT], vocab_size=300)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                      d_model=16, pos="rope")
    return GPT(cfg, seed=0).eval(), tok


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_prompt_and_continuation_read_as_the_decode_of_all_ids(kind):
    """The word tokenizer's space between the prompt's last word and the first new one
    (dropped when the continuation was decoded on its own) is there, for every tokenizer,
    in sample_text and stream_text alike."""
    from minigpt.generation import prompt_ids

    model, tok = _trained(kind)
    prompt = "The encoding"
    kw = dict(max_new_tokens=12, temperature=1.0, seed=5)
    ids = torch.tensor([prompt_ids(tok, prompt)])
    all_ids = generate(model, ids, 12, temperature=1.0, generator=torch.Generator().manual_seed(5))
    whole = tok.decode(all_ids[0].tolist())
    assert tok.decode(ids[0].tolist()) == prompt  # the prompt round-trips
    text = sample_text(model, tok, prompt, **kw)[0]
    assert text == whole
    assert "".join(piece for _, piece in stream_text(model, tok, prompt, **kw)) == whole
    if kind == "word":  # the case that was wrong: a space after "encoding" (no punctuation
        assert text[len(prompt)] == " " or text[len(prompt)] in ".,;:!?"  # follows it here)


# --- the sampling settings: one dataclass behind the API, `sample`, `serve` and training ---

def test_every_sampling_setting_is_a_sample_flag_with_the_dataclass_default():
    """`minigpt sample`'s flags are the fields of SamplingSettings, and a command line that
    gives none of them samples with exactly the dataclass's defaults."""
    import dataclasses

    from minigpt.cli import build_parser
    from minigpt.cli.options import given_settings
    from minigpt.config import SamplingSettings, sampling_settings

    parser = build_parser()
    args = parser.parse_args(["sample", "--ckpt", "x"])
    assert sampling_settings(given_settings(args)) == SamplingSettings()
    names = [f.name for f in dataclasses.fields(SamplingSettings)]
    assert set(given_settings(args)) == set()
    flags = ["--" + n.replace("_", "-") for n in names]
    values = {"max_new_tokens": "7", "temperature": "0.5", "top_k": "3", "top_p": "0.9",
              "seed": "4", "dtype": "float32", "quantize": "int8", "speculate": "ngram"}
    assert set(values) == set(names)  # a new field needs a value here, and is a flag for free
    args = parser.parse_args(["sample", "--ckpt", "x",
                              *[a for f, n in zip(flags, names) for a in (f, values[n])]])
    got = sampling_settings(given_settings(args))
    assert got == SamplingSettings(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9,
                                   seed=4, dtype="float32", quantize="int8",
                                   speculate="ngram")


def test_a_bad_sampling_setting_reads_the_same_from_python_the_cli_and_the_server(tmp_path):
    """One rule, one sentence: named as a keyword in Python and the server's JSON, as a flag
    on the command line (checked before the checkpoint is even read)."""
    from conftest import run_cli

    from minigpt.serve.engine import Engine, Entry

    model, tok = _model_and_tok()
    with pytest.raises(MiniGPTError) as api:
        generate(model, torch.tensor([[1]]), 3, top_p=1.5)
    assert str(api.value) == "top_p must be in (0, 1], got 1.5."
    r = run_cli("sample", "--ckpt", tmp_path / "missing", "--top-p", "1.5")
    assert r.returncode == 2 and r.stderr.strip().endswith("--top-p must be in (0, 1], got 1.5.")
    engine = Engine([Entry("m", tmp_path, model, tok, "rope", None, None, "last")])
    with pytest.raises(MiniGPTError) as served:
        engine.parse_request({"model": "m", "prompt": "ab", "top_p": 1.5})
    assert str(served.value) == str(api.value)


def test_unknown_sampling_knobs_are_refused_by_name():
    model, tok = _model_and_tok()
    with pytest.raises(MiniGPTError, match=r"unknown sampling setting\(s\) topk; the settings "
                                           r"are max_new_tokens, temperature, top_k"):
        generate(model, torch.tensor([[1]]), 3, topk=2)
    with pytest.raises(MiniGPTError, match="unknown sampling setting"):
        sample_text(model, tok, "ab", temprature=0.5)


def test_generate_takes_a_seed_or_settings_as_sample_text_does():
    """`seed=` (or a SamplingSettings) gives generate() the generator sample_text would seed;
    without either it draws from torch's global generator, as Hugging Face's does."""
    from minigpt.config import SamplingSettings

    model, tok = _model_and_tok()
    x = torch.tensor([tok.encode("abc")])
    by_seed = generate(model, x, 12, temperature=1.0, seed=9, dtype="float32")
    by_gen = generate(model, x, 12, temperature=1.0, dtype="float32",
                      generator=torch.Generator().manual_seed(9))
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, seed=9, dtype="float32")
    assert torch.equal(by_seed, by_gen) and torch.equal(generate(model, x, settings=s), by_gen)
    (text,) = sample_text(model, tok, "abc", settings=s)
    assert text == tok.decode(by_gen[0].tolist())
    torch.manual_seed(1)
    a = generate(model, x, 12, temperature=1.0, dtype="float32")
    torch.manual_seed(1)
    assert torch.equal(a, generate(model, x, 12, temperature=1.0, dtype="float32"))
    with pytest.raises(MiniGPTError, match="a seed or a generator, not both"):
        generate(model, x, 3, seed=1, generator=torch.Generator())


def test_training_samples_use_the_sampling_settings_of_the_run():
    """The samples printed after training (and the study's) are SamplingSettings built from
    the run's sample_tokens and seed; their temperature rule is the sampling one."""
    from minigpt.config import MAX_TEMPERATURE, SamplingSettings, TrainConfig

    t = TrainConfig(sample_tokens=33, seed=5, sample_temperatures=[0.0, 1.0])
    assert t.sampling(0.0) == SamplingSettings(max_new_tokens=33, temperature=0.0, seed=5,
                                               dtype="float32")  # the same on every machine
    SamplingSettings(temperature=MAX_TEMPERATURE)
    TrainConfig(sample_temperatures=[MAX_TEMPERATURE])
    for bad in (lambda: SamplingSettings(temperature=MAX_TEMPERATURE * 1.01),
                lambda: TrainConfig(sample_temperatures=[MAX_TEMPERATURE * 1.01])):
        with pytest.raises(MiniGPTError, match="temperature"):
            bad()
