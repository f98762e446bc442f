"""Three tokenizers behind one interface; each saves to and loads from one JSON file.

- `char`: one id per character seen in training; unknown characters are an error.
- `word`: words and punctuation (and newlines), vocabulary from the training text,
  `<unk>` for the rest; `decode` re-joins with ordinary English spacing.
- `bpe`:  byte-level BPE trained with Hugging Face `tokenizers`; round-trips any text.

Every tokenizer has a `<pad>` id (for the `documents` batching) that decode drops.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
FORMAT_VERSION = 1


def show(piece: str) -> str:
    """A piece of text quoted for a message: repr, but a backslash reads as one (\\)."""
    return "'\\' (a backslash)" if piece == "\\" else repr(piece)


def typed_escape_hint(text: str, unknown: Iterable[str]) -> str:
    """For a prompt with a typed backslash escape (\\n, \\t) the tokenizer cannot read: a
    clause saying it is two characters, and how to type the real one in a shell."""
    typed = [e for e in ("\\n", "\\t") if e in text]
    if "\\" not in unknown or not typed:
        return ""
    real = {"\\n": "newline", "\\t": "tab"}[typed[0]]
    return (f"; the prompt holds a typed {typed[0]}, which is a backslash and a letter, not a "
            f"{real}: in bash, write $'...{typed[0]}...' for a real {real}")


class Tokenizer:
    kind: ClassVar[str] = ""

    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def check_text(self, text: str) -> None:
        """Raise a DataError if `text` (a prompt) cannot be encoded faithfully."""

    def prompt_warning(self, text: str) -> str | None:
        """A warning for a prompt that encodes, but not faithfully (None if it is fine)."""
        return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_text

        atomic_write_text(path, json.dumps({"format": "minigpt-tokenizer", "version":
                                            FORMAT_VERSION, **self.to_dict()}, ensure_ascii=False))

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.pad_id = len(self.chars)  # <pad> comes after the characters
        self.vocab_size = len(self.chars) + 1
        self._lut: np.ndarray | None = None

    @classmethod
    def train(cls, texts: Iterable[str], **_: Any) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        if not seen:
            raise DataError("cannot build a char vocabulary from an empty corpus.")
        return cls(sorted(seen))

    def check_text(self, text: str) -> None:
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            shown = ", ".join(show(c) for c in unknown[:5])
            e = DataError(
                f"the char tokenizer does not know the character(s) {shown} (it knows only "
                "the characters of the text it was built from); use only those characters"
                f"{typed_escape_hint(text, unknown)}.")
            e.unknown = unknown  # type: ignore[attr-defined]
            raise e

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised: code points -> ids through a lookup table (-1 marks unknown)."""
        if self._lut is None:
            self._lut = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
            self._lut[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self._lut[np.minimum(cps, len(self._lut) - 1)]
        ids[cps >= len(self._lut)] = -1
        if (ids < 0).any():
            self.check_text(text)
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        joined = self.encode_array("".join(texts))
        cuts = np.cumsum([len(t) for t in texts])[:-1]
        return np.split(joined, cuts)

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] for i in ids if 0 <= i < n)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}


# special tokens, newlines, words (with inner apostrophes, as "ne'er"), single punctuation marks
WORD_RE = re.compile(r"<(?:pad|unk|bos|eos)>|\n|[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")
NO_SPACE_BEFORE = set(".,;:!?)]}'’”-") | {"'s", "n't"}
NO_SPACE_AFTER = set("([{‘“-") | {"\n"}


class WordTokenizer(Tokenizer):
    kind = "word"
    specials = [PAD, UNK, BOS, EOS]

    def __init__(self, words: list[str]) -> None:
        self.itos = list(self.specials) + [w for w in words if w not in self.specials]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.unk_id = self.stoi[PAD], self.stoi[UNK]
        self.vocab_size = len(self.itos)

    @staticmethod
    def split(text: str) -> list[str]:
        return WORD_RE.findall(text)

    @classmethod
    def train(cls, texts: Iterable[str], min_freq: int = 1, max_vocab: int = 20_000,
              **_: Any) -> "WordTokenizer":
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(cls.split(t))
        if not counts:
            raise DataError("cannot build a word vocabulary from an empty corpus.")
        keep = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
                if c >= min_freq][: max(0, max_vocab - len(cls.specials))]
        return cls(keep)

    def prompt_warning(self, text: str) -> str | None:
        unknown = list(dict.fromkeys(w for w in self.split(text) if w not in self.stoi))
        if not unknown:
            return None
        shown = ", ".join(show(w) for w in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return (f"warning: the word tokenizer does not know {shown}{more}; the model sees "
                f"{'it' if len(unknown) == 1 else 'each'} as {UNK}"
                f"{typed_escape_hint(text, unknown)}.")

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        prev = "\n"
        for i in ids:
            if not 0 <= i < len(self.itos) or i == self.pad_id:
                continue
            w = self.itos[i]
            if out and prev not in NO_SPACE_AFTER and w not in NO_SPACE_BEFORE and w != "\n":
                out.append(" ")
            out.append(w)
            prev = w
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "words": self.itos[len(self.specials):]}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers` (the GPT-2 scheme)."""

    kind = "bpe"
    specials = [PAD, EOS]

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        self.pad_id = hf.token_to_id(PAD)
        self.vocab_size = hf.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, **_: Any) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=cls.specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        # <eos> written in the text comes back as written; only padding is dropped
        return self.hf.decode([i for i in ids if i != self.pad_id], skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "hf": json.loads(self.hf.to_str())}


KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer,
                                     "bpe": BPETokenizer}


def train_tokenizer(kind: str, texts: Iterable[str] | Iterator[str], *, vocab_size: int = 512,
                    min_freq: int = 1, max_vocab: int = 20_000) -> Tokenizer:
    return KINDS[kind].train(texts, vocab_size=vocab_size, min_freq=min_freq,
                             max_vocab=max_vocab)


def from_dict(obj: Any, where: str = "tokenizer") -> Tokenizer:
    try:
        kind = obj["type"]
        if kind == "char":
            chars = obj["chars"]
            if not all(isinstance(c, str) and len(c) == 1 for c in chars) or \
                    len(set(chars)) != len(chars):
                raise ValueError
            return CharTokenizer(chars)
        if kind == "word":
            words = obj["words"]
            if not all(isinstance(w, str) for w in words):
                raise ValueError
            return WordTokenizer(words)
        if kind == "bpe":
            from tokenizers import Tokenizer as HFTokenizer

            return BPETokenizer(HFTokenizer.from_str(json.dumps(obj["hf"])))
    except Exception:
        pass
    raise DataError(f"{where} is not a valid minigpt tokenizer file.")


def load_tokenizer(path: str | Path) -> Tokenizer:
    from .files import read_json

    p = Path(path)
    obj = read_json(p, "tokenizer file", DataError)
    if not isinstance(obj, dict) or obj.get("format") != "minigpt-tokenizer":
        raise DataError(f"{p} is not a minigpt tokenizer file.")
    return from_dict(obj, where=str(p))
