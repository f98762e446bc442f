"""Corpus conversion, splits, the token cache, and the two batching modes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from minigpt.config import ModelConfig
from minigpt.data import VAL_PLAYS, play_to_text, prepare, shakespeare_texts
from minigpt.errors import DataError
from minigpt.config import IGNORE_INDEX
from minigpt.model import GPT

PLAY = """# Macbeth

## ACT I

### SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

_Enter MACBETH, with
Attendants_

**MACBETH**  
[Aside] So foul and fair a day  
I have not _seen_.\\--Speak!

*Exeunt.*
"""


def test_play_to_text_rules():
    assert play_to_text(PLAY) == (
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "MACBETH:\nSo foul and fair a day\nI have not seen.--Speak!\n")


def test_shakespeare_split_by_whole_plays():
    texts = shakespeare_texts()
    val_names = {name for name, _ in texts["val"]}
    assert val_names == set(VAL_PLAYS)
    assert len(texts["train"]) + len(texts["val"]) >= 37
    train_chars = sum(len(t) for _, t in texts["train"])
    val_chars = sum(len(t) for _, t in texts["val"])
    assert 0.07 < val_chars / (train_chars + val_chars) < 0.15
    hamlet = dict(texts["val"])["hamlet"]
    assert "To be, or not to be" in hamlet
    assert not any("To be, or not to be: that is the question" in t for _, t in texts["train"])
    assert "**" not in hamlet and "#" not in hamlet and "_" not in hamlet


def test_cache_is_reused_and_keyed_by_settings(corpus):
    t0 = time.perf_counter()
    a = prepare(str(corpus), "char")
    meta_dir = a.train.filename if hasattr(a.train, "filename") else None
    t_first = time.perf_counter() - t0
    b = prepare(str(corpus), "char")
    assert np.array_equal(a.train, b.train) and b.meta == a.meta
    assert meta_dir is not None and b.train.filename == meta_dir  # same cached file
    c = prepare(str(corpus), "word")
    assert c.train.filename != meta_dir and c.tokenizer.kind == "word"
    assert t_first >= 0


def test_file_split_90_10_by_position(corpus):
    ds = prepare(str(corpus), "char")
    text = corpus.read_text()
    n_train, n_val = len(ds.train), len(ds.val)
    assert n_train + n_val == len(text)
    assert 0.88 < n_train / len(text) < 0.92
    assert ds.tokenizer.decode(ds.val.tolist()) == text[n_train:]


def test_directory_of_text_files(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("alpha beta\n" * 200)
    (d / "b.txt").write_text("gamma delta\n" * 200)
    (d / "notes.md").write_text("ignored")
    ds = prepare(str(d), "word")
    words = set(ds.tokenizer.itos)
    assert {"alpha", "beta", "gamma"} <= words and "ignored" not in words


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"\xff\xfe bad bytes \xff" * 10, "not UTF-8"),
    (b"\x00\x01\x02" * 100, "binary"),
])
def test_bad_corpora(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        prepare(str(p), "char")


def test_too_short_to_split(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("a single line")
    with pytest.raises(DataError, match="too short to hold out a validation split"):
        prepare(str(p), "char")


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(str(tmp_path / "nope.txt"), "char")


def test_corpus_shorter_than_block(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("to be or not to be\n" * 20)
    ds = prepare(str(p), "char")
    with pytest.raises(DataError, match="fewer than block_size"):
        ds.check_block(64)


def test_batches_are_deterministic_and_shifted(corpus):
    ds = prepare(str(corpus), "char")
    x, y = ds.batch("train", step=3, micro=0, batch_size=4, block_size=16, seed=1)
    x2, y2 = ds.batch("train", step=3, micro=0, batch_size=4, block_size=16, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    x3, _ = ds.batch("train", step=4, micro=0, batch_size=4, block_size=16, seed=1)
    assert not torch.equal(x, x3)


@pytest.mark.parametrize("mode", ["stream", "documents"])
def test_ranks_slice_the_same_global_batch(corpus, mode):
    ds = prepare(str(corpus), "char")
    kw = dict(step=2, micro=1, block_size=16, seed=5, mode=mode)
    whole, _ = ds.batch("train", batch_size=6, **kw)
    r0, _ = ds.batch("train", batch_size=3, rank=0, world=2, **kw)
    r1, _ = ds.batch("train", batch_size=3, rank=1, world=2, **kw)
    w = max(r0.shape[1], r1.shape[1])
    pad = ds.tokenizer.pad_id

    def padded(t):
        return torch.nn.functional.pad(t, (0, w - t.shape[1]), value=pad)

    assert torch.equal(padded(whole)[:, :w], torch.cat([padded(r0), padded(r1)]))


def test_documents_batches_are_padded_speeches(corpus):
    ds = prepare(str(corpus), "char")
    x, y = ds.batch("train", step=0, micro=0, batch_size=8, block_size=200, seed=0,
                    mode="documents")
    pad = ds.tokenizer.pad_id
    assert (x == pad).any(), "rows of different lengths must be padded"
    assert torch.equal(x == pad, y == IGNORE_INDEX)
    first = ds.tokenizer.decode(x[0][x[0] != pad].tolist())
    assert first.endswith(":") or ":\n" in first or first[0].isupper()


def test_padding_changes_neither_loss_nor_gradients():
    cfg = ModelConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, d_model=16, pos="rope")
    model = GPT(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    row = torch.randint(0, 29, (1, 11), generator=g)
    x, y = row[:, :-1], row[:, 1:]
    pad_id = 29
    xp = torch.cat([x, torch.full((1, 6), pad_id)], dim=1)
    yp = torch.cat([y, torch.full((1, 6), IGNORE_INDEX)], dim=1)

    def loss_and_grads(a, b):
        model.zero_grad()
        _, loss = model(a, b)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    l1, g1 = loss_and_grads(x, y)
    l2, g2 = loss_and_grads(xp, yp)
    assert torch.allclose(l1, l2, atol=1e-6)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-6), n


def test_large_file_is_streamed_in_chunks(tmp_path, monkeypatch):
    import minigpt.data as data

    monkeypatch.setattr(data, "CHUNK_BYTES", 1000)  # force many chunks on a small file
    p = tmp_path / "big.txt"
    text = "".join(f"line {i} of the corpus\n" for i in range(3000))
    p.write_text(text)
    ds = prepare(str(p), "char")
    assert ds.tokenizer.decode(ds.train.tolist()) + ds.tokenizer.decode(ds.val.tolist()) == text
    assert os.path.getsize(ds.train.filename) == 2 * len(ds.train)  # uint16 on disk
