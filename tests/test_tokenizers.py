"""Tokenizers: round trips, unknown input, one JSON file each."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from conftest import SMALL_TEXT, run_cli, tiny_config, values
from minigpt.errors import DataError
from minigpt.tokenizers import (BPETokenizer, CharTokenizer, WordTokenizer, load_tokenizer,
                                train_tokenizer)
from minigpt.training import train


TEXT = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east.\n\n"


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_save_load_round_trip(kind, tmp_path):
    tok = train_tokenizer(kind, [TEXT * 20], vocab_size=300)
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert type(again) is type(tok)
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.vocab_size == tok.vocab_size and again.pad_id == tok.pad_id


def test_char_round_trip_and_unknown():
    tok = CharTokenizer.train([TEXT])
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.vocab_size == len(set(TEXT)) + 1  # + <pad>
    with pytest.raises(DataError, match="does not know the character"):
        tok.encode("Zebra")
    assert tok.decode([tok.pad_id]) == ""


def test_word_tokenizer_splits_and_rejoins():
    tok = WordTokenizer.train([TEXT])
    assert WordTokenizer.split("ne'er, sir!\n") == ["ne'er", ",", "sir", "!", "\n"]
    assert tok.decode(tok.encode(TEXT)) == TEXT.rstrip("\n") + "\n\n"
    unk = tok.encode("what zebra")
    assert unk[1] == tok.unk_id and tok.decode(unk) == "what <unk>"


def test_word_tokenizer_min_freq_and_max_vocab():
    tok = WordTokenizer.train(["a a a b b c"], min_freq=2)
    assert tok.itos[4:] == ["a", "b"]
    tok = WordTokenizer.train(["a a a b b c"], max_vocab=5)
    assert tok.itos[4:] == ["a"] and tok.vocab_size == 5


def test_bpe_round_trips_any_text():
    tok = BPETokenizer.train([TEXT * 10], vocab_size=300)
    for s in [TEXT, "Zürich — 東京 🎭", ""]:
        assert tok.decode(tok.encode(s)) == s
    assert tok.vocab_size <= 300


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set(TEXT))), max_size=80))
def test_char_round_trip_property(s):
    tok = CharTokenizer.train([TEXT])
    assert tok.decode(tok.encode(s)) == s


_BPE = BPETokenizer.train([TEXT * 10], vocab_size=300)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["<eos>", "a<eos>b", "<unk> <bos>"]))
def test_bpe_round_trip_property(s):
    assume("<pad>" not in s)  # padding is what decode leaves out
    assert _BPE.decode(_BPE.encode(s)) == s


_WORD = WordTokenizer.train([TEXT])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("abc ,.!?\n'-") + ["light", "east", "It's"]), max_size=30))
def test_word_encode_is_stable_after_one_round_trip(parts):
    s = "".join(parts)
    once = _WORD.encode(s)
    assert _WORD.encode(_WORD.decode(once)) == once


def test_load_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(DataError, match="not a minigpt tokenizer"):
        load_tokenizer(p)
    p.write_text('{"format": "minigpt-tokenizer", "type": "char", "chars": ["ab"]}')
    with pytest.raises(DataError, match="not a valid minigpt tokenizer"):
        load_tokenizer(p)


def test_a_typed_backslash_n_is_named_as_a_backslash_with_a_hint():
    """`--prompt 'a\\nb'` in a shell is a backslash and an n: the message shows a backslash
    as one (not Python's '\\\\') and says how to type a real newline."""
    from minigpt.tokenizers import CharTokenizer, WordTokenizer

    char = CharTokenizer.train(["ab c\n"])
    with pytest.raises(DataError) as e:
        char.check_text("ab\\nc")
    assert "'\\' (a backslash), 'n'" in str(e.value) and "'\\\\'" not in str(e.value)
    assert "typed \\n, which is a backslash and a letter, not a newline" in str(e.value)
    assert "$'...\\n...'" in str(e.value)
    word = WordTokenizer.train(["ab c.\n"])
    note = word.prompt_warning("ab\\nc")
    assert "'\\' (a backslash)" in note and "not a newline" in note
    with pytest.raises(DataError) as e:  # an unknown backslash alone gets no newline hint
        char.check_text("a\\b")
    assert "newline" not in str(e.value)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(min_size=1, max_size=60))
def test_char_and_word_tokenizer_files_round_trip(tmp_path_factory, text):
    from minigpt.tokenizers import CharTokenizer, WordTokenizer, load_tokenizer

    p = tmp_path_factory.getbasetemp() / "tok.json"
    char = CharTokenizer.train([text])
    char.save(p)
    again = load_tokenizer(p)
    assert again.decode(again.encode(text)) == text and again.vocab_size == char.vocab_size
    if WordTokenizer.split(text):
        word = WordTokenizer.train([text])
        word.save(p)
        w2 = load_tokenizer(p)
        assert w2.encode(text) == word.encode(text) and w2.itos == word.itos


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(values, st.builds(lambda kind, rest: {"type": kind, **rest},
                                   st.sampled_from(["char", "word", "bpe"]),
                                   st.dictionaries(st.sampled_from(["chars", "words", "hf"]),
                                                   values, max_size=2))))
def test_tokenizer_files_give_a_tokenizer_or_a_data_error(d):
    from minigpt.tokenizers import Tokenizer, from_dict

    try:
        tok = from_dict(d)
    except DataError:
        return
    assert isinstance(tok, Tokenizer)


def test_init_from_char_tokenizer_names_the_new_datas_missing_characters(corpus, tmp_path):
    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    new = tmp_path / "new.txt"
    new.write_text(SMALL_TEXT * 20 + "Zoë says ½\n", encoding="utf-8")
    r = run_cli("train", "--init-from", src, "--data", new, "--out", tmp_path / "ft",
                "--quiet")
    assert r.returncode == 2, r.stderr
    err = r.stderr
    assert f"the tokenizer comes from {src}, not from the data {new}" in err
    assert "lacks characters of that data: '½', 'ë'; remove them" in err
    assert "without --init-from" in err
    assert not (tmp_path / "ft").exists()


def test_sample_warns_once_about_unknown_words(corpus, tmp_path):
    out = tmp_path / "w"
    train(tiny_config(corpus, train={"tokenizer": "word"}), out, progress=False)
    r = run_cli("sample", "--ckpt", out, "--prompt", "zebra zebra speak quagga",
                "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning:") == 1
    assert "does not know 'zebra', 'quagga'; the model sees each as <unk>" in r.stderr
    r = run_cli("sample", "--ckpt", out, "--prompt", "speak", "--max-new-tokens", "3")
    assert "warning" not in r.stderr
