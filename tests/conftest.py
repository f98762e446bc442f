"""Shared fixtures: a private token cache per test session, a small corpus, tiny runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

# A few hundred lines of real Shakespeare-like text is plenty for tiny models.
SMALL_TEXT = """FIRST CITIZEN:
Before we proceed any further, hear me speak.

ALL:
Speak, speak.

FIRST CITIZEN:
You are all resolved rather to die than to famish?

ALL:
Resolved. resolved.

FIRST CITIZEN:
First, you know Caius Marcius is chief enemy to the people.

ALL:
We know't, we know't.

FIRST CITIZEN:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?

ALL:
No more talking on't; let it be done: away, away!

SECOND CITIZEN:
One word, good citizens.

"""


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["MINIGPT_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small UTF-8 text file (about 12 KB)."""
    p = tmp_path / "corpus.txt"
    p.write_text(SMALL_TEXT * 24, encoding="utf-8")
    return p


def tiny_config(data: str | Path, model: dict | None = None, train: dict | None = None):
    """A RunConfig for a seconds-long run on `data` (a path or 'shakespeare')."""
    from minigpt.config import merge, preset

    t = dict(data=str(data), max_steps=6, eval_interval=3, eval_iters=1, log_interval=1,
             sample_tokens=0, batch_size=4)
    m = dict(block_size=16, n_layer=2, n_head=2, d_model=16)
    return merge(preset("tiny"), {**m, **(model or {})}, {**t, **(train or {})})


def interrupt_training(out: Path, sig: int, *args: str) -> subprocess.CompletedProcess:
    """Start an endless `minigpt train` into `out`, send `sig` once it has logged a step,
    and return the finished process with its output."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "minigpt", "train", "--out", str(out), *map(str, args),
         "--max-steps", "100000", "--eval-interval", "100000", "--log-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    """Run `python -m minigpt ARGS` as a user would, capturing output."""
    return subprocess.run([sys.executable, "-m", "minigpt", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def chromium() -> str | None:
    """The system Chromium (scripts/ensure-chromium.sh installs it), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


# the flags of a seconds-long `minigpt train` (add --data and --out)
TINY_ARGS = ["--preset", "tiny", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
             "--block-size", "16", "--eval-iters", "1", "--sample-tokens", "0", "--dtype",
             "float32", "--device", "cpu"]


def one_line(err: str) -> str:
    """The one line a refused command printed (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# hypothesis: any JSON-like value, with the names and sizes configs and tokenizer files use
NAMES = ["learned", "rope", "alibi", "t5", "nope", "sinusoidal", "char", "bpe", "word", "cpu",
         "auto", "gelu", "gelu_tanh", "stream", "documents", "off", "float32", "cuda:0", ""]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**13, 10**13), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(NAMES),
    st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 0.5, 1e-3, 10**9, 10**12, 2.0, 16.0]))
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=2)), max_leaves=4)
