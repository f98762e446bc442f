"""The playground's text is the decode of all ids, for every tokenizer (issue 23, point 1):
the engine's events, in process, from models with char, word and BPE tokenizers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from minigpt.config import ModelConfig
from minigpt.generation import generate, prompt_ids
from minigpt.model import GPT
from minigpt.serve.engine import Engine, Entry
from minigpt.tokenizers import train_tokenizer

TEXT = ("The encoding adds a position to every token. The model reads the encoding, "
        "and the encoding tells it where each word is.\n") * 4


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_page_text_is_the_decode_of_all_ids(kind: str) -> None:
    tok = train_tokenizer(kind, [TEXT], vocab_size=300)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                      d_model=16, pos="rope")
    model = GPT(cfg, seed=0).eval()
    engine = Engine([Entry(kind, Path("."), model, tok, "rope", 0, None, "last")])
    events: list[dict] = []
    finished = threading.Event()

    def emit(ev: dict) -> None:
        events.append(ev)
        if ev["type"] in ("done", "error"):
            finished.set()

    prompt = "The encoding"
    req = engine.parse_request({"model": kind, "prompt": prompt, "temperature": 1.0,
                                "max_new_tokens": 12, "seed": 3})
    engine.start(req, emit)
    assert finished.wait(60)
    engine.close()
    ids = generate(model, torch.tensor([prompt_ids(tok, prompt)]), 12, temperature=1.0,
                   generator=torch.Generator().manual_seed(3))[0].tolist()
    assert [e["id"] for e in events if e["type"] == "token"] == ids[-12:]
    page = events[0]["prompt_text"] + "".join(e["text"] for e in events if e["type"] == "token")
    whole = tok.decode(ids)
    # the page may hold back the bytes of a character the last token did not finish
    assert page == whole or (kind == "bpe" and whole.startswith(page)
                             and set(whole[len(page):]) == {"\ufffd"})


def test_encoding_note_speaks_to_a_browser_user(tmp_path: Path) -> None:
    """The Encoding tab's note for an encoding with no picture names the page's tabs, not
    command-line flags (issue 23, point 8)."""
    from conftest import SMALL_TEXT, tiny_config

    from minigpt.serve.engine import load_entries
    from minigpt.training import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 4, encoding="utf-8")
    train(tiny_config(corpus, {"pos": "nope"}, {"max_steps": 2, "eval_interval": 2}),
          tmp_path / "nope", progress=False)
    engine = Engine(load_entries([tmp_path / "nope"]))
    try:
        _, images, note = engine.viz("nope")
    finally:
        engine.close()
    assert images == []
    assert note == ("nope adds no positional information, so there is nothing of the encoding "
                    "to draw; generate some text, then open the Attention tab to see the "
                    "attention it leads to.")
    assert "--" not in note
