"""Every bad input of every command: one sentence, exit code 2, no traceback, no file changed.

Each row of ROWS is one line of the table in docs/bad-inputs.md (a test checks the two agree).
Rows run in-process through `minigpt.cli.main` for speed; the rows marked `sub` also run as
a real `python -m minigpt` process to prove that a user sees no traceback there either.
After the table, more `train`, `sample` and checkpoint cases run as real processes, and the
library's errors are checked to name arguments where the CLI names flags.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import SMALL_TEXT, run_cli, tiny_config
from minigpt.cli import main
from minigpt.config import merge, preset
from minigpt.errors import ConfigError, MiniGPTError
from minigpt.training import train


ROOT = Path(__file__).resolve().parents[1]


# --- the fixture checkpoint and its damaged copies -------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A module-wide directory: corpus.txt and a finished tiny checkpoint ckpt/ (learned, char)."""
    d = tmp_path_factory.mktemp("bad-inputs")
    (d / "corpus.txt").write_text(SMALL_TEXT * 24, encoding="utf-8")
    train(tiny_config(d / "corpus.txt", train={"max_steps": 3, "eval_interval": 3}),
          d / "ckpt", progress=False)
    return d


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Ctx:
    """What a row's argv builder may use: the fixture and a private scratch directory."""

    def __init__(self, base: Path, tmp: Path) -> None:
        self.base, self.tmp = base, tmp
        self.ckpt = base / "ckpt"
        self.corpus = base / "corpus.txt"
        self.out = tmp / "out"  # where a command may create new files

    def file(self, name: str, data: bytes | str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def copy(self, edit: Callable[[Path], None] | None = None) -> Path:
        """A copy of the fixture checkpoint, changed by `edit`."""
        d = self.tmp / "ck"
        shutil.copytree(self.ckpt, d)
        if edit:
            edit(d)
        return d

    def hf_dir(self, config: dict | str | None, files: dict[str, bytes] | None = None,
               tokenizer: bool = False) -> Path:
        """A Hugging Face model directory; `tokenizer` adds the fixture's, as HF JSON."""
        d = self.tmp / "hf"
        d.mkdir()
        if tokenizer:
            from minigpt.hf import tokenizer_to_hf_backend
            from minigpt.tokenizers import load_tokenizer

            tok = load_tokenizer(self.ckpt / "tokenizer.json")
            (d / "tokenizer.json").write_text(tokenizer_to_hf_backend(tok).to_str())
            config = {**config, "vocab_size": tok.vocab_size}
        if config is not None:
            (d / "config.json").write_text(config if isinstance(config, str)
                                           else json.dumps(config))
        for name, data in (files or {}).items():
            (d / name).write_bytes(data)
        return d


def edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        for key, value in changes.items():
            section, name = key.split("__")
            if value is DROP:
                cfg[section].pop(name)
            else:
                cfg[section][name] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


DROP = object()


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return edit


def truncate(name: str, n: int) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes()[:n])
    return edit


def remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def tensors(name: str, change: Callable[[dict[str, torch.Tensor]], None]
            ) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        t = load_file(d / name)
        meta = None
        if name == "trainer_state.safetensors":
            from safetensors import safe_open
            with safe_open(str(d / name), "pt") as f:
                meta = f.metadata()
        change(t)
        save_file(t, d / name, metadata=meta)
    return edit


def pickle_bomb() -> bytes:
    """Bytes that would run code if unpickled (here: harmless, a marker file nobody checks)."""
    import pickle

    class Bomb:
        def __reduce__(self):
            return (exec, ("open('/nonexistent-dir/x', 'w')",))

    return pickle.dumps(Bomb())


def foreign_tokenizer(d: Path) -> None:
    from minigpt.tokenizers import CharTokenizer

    CharTokenizer(list("abcdef")).save(d / "tokenizer.json")


def hf_weights(c: Ctx) -> bytes:
    """A one-layer GPT-2 (n_embd 16, the fixture's vocabulary) as HF safetensors bytes."""
    from safetensors.torch import save

    from minigpt.checkpoint import model_state
    from minigpt.config import ModelConfig
    from minigpt.hf import to_hf_state
    from minigpt.model import GPT
    from minigpt.tokenizers import load_tokenizer

    vocab = load_tokenizer(c.ckpt / "tokenizer.json").vocab_size
    cfg = ModelConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, d_model=16)
    return save(to_hf_state(model_state(GPT(cfg)), cfg))


GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 16, "n_layer": 1,
        "n_head": 2, "n_positions": 16, "vocab_size": 300}


# --- the rows ----------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    command: str
    what: str  # the bad input, in words (the table's second column)
    argv: Callable[[Ctx], list]
    match: str  # a piece of the one-line error message
    sub: bool = False  # also run as a real subprocess


TRAIN = ["train", "--preset", "tiny", "--quiet", "--sample-tokens", "0"]


def t(ctx: Ctx, *extra) -> list:
    """A train command line on the good corpus writing into the scratch directory."""
    return [*TRAIN, "--data", ctx.corpus, "--out", ctx.out, *extra]


ROWS = [
    # train: numbers and names
    Row("train-int-type", "train", "a word where a number goes (`--n-layer two`)",
        lambda c: t(c, "--n-layer", "two"), "invalid int value"),
    Row("train-nan", "train", "not a finite number (`--lr nan`)",
        lambda c: t(c, "--lr", "nan"), "lr must be a finite number"),
    Row("train-lr-zero", "train", "out of range (`--lr 0`)",
        lambda c: t(c, "--lr", "0"), "lr must be in (0.0, 10.0]"),
    Row("train-dropout", "train", "out of range (`--dropout 1.5`)",
        lambda c: t(c, "--dropout", "1.5"), "dropout must be in"),
    Row("train-heads", "train", "shapes that do not fit (`--d-model 30 --n-head 4`)",
        lambda c: t(c, "--d-model", "30", "--n-head", "4"), "divisible by n_head"),
    Row("train-huge", "train", "absurd sizes (`--d-model 1000000000`)",
        lambda c: t(c, "--d-model", str(10**9)), "--d-model must be between"),
    Row("train-pos", "train", "unknown encoding (`--pos fourier`)",
        lambda c: t(c, "--pos", "fourier"), "invalid choice: 'fourier'"),
    Row("train-preset", "train", "unknown preset (`--preset huge`)",
        lambda c: t(c, "--preset", "huge"), "unknown preset"),
    Row("train-tokenizer", "train", "unknown tokenizer (`--tokenizer sentencepiece`)",
        lambda c: t(c, "--tokenizer", "sentencepiece"), "invalid choice: 'sentencepiece'"),
    Row("train-temps", "train", "malformed list (`--sample-temperatures a,b`)",
        lambda c: t(c, "--sample-temperatures", "a,b"), "comma-separated numbers"),
    Row("train-device", "train", "a device this machine lacks (`--device cuda:7`)",
        lambda c: t(c, "--device", "cuda:7"), "not available"),
    Row("train-until", "train", "a stop step below 1 (`--until 0`)",
        lambda c: t(c, "--until", "0"), "--until must be a positive"),
    Row("train-flag", "train", "a misspelt flag (`--n-layerz 2`)",
        lambda c: t(c, "--n-layerz", "2"), "unrecognized arguments"),
    # train: data
    Row("data-missing", "train", "`--data` path that does not exist",
        lambda c: t(c, "--data", c.tmp / "missing.txt"), "does not exist"),
    Row("data-empty", "train", "empty text file",
        lambda c: t(c, "--data", c.file("empty.txt", "")), "empty"),
    Row("data-binary", "train", "binary file (NUL bytes)",
        lambda c: t(c, "--data", c.file("bin.txt", b"PK\x03\x04\x00\x00binary\n" * 50)),
        "looks binary"),
    Row("data-latin1", "train", "text that is not UTF-8 (Latin-1)",
        lambda c: t(c, "--data", c.file("latin.txt", "café crème\n".encode("latin-1") * 50)),
        "not UTF-8"),
    Row("data-no-txt", "train", "a directory with no .txt files",
        lambda c: t(c, "--data", c.file("docs/a.md", "x").parent), "holds no .txt files"),
    Row("data-short", "train", "text shorter than one training window",
        lambda c: t(c, "--data", c.file("short.txt", "hey there\n" * 20), "--block-size",
                    "500"), "fewer than block_size"),
    # train: output directory
    Row("out-existing", "train", "`--out` already holding a run (never overwritten)",
        lambda c: [*TRAIN, "--data", c.corpus, "--out", c.ckpt], "already holds a run"),
    Row("out-under-file", "train", "`--out` inside a regular file",
        lambda c: t(c, "--out", c.file("afile", "x") / "run"), "cannot create output directory"),
    # train: config files
    Row("config-missing", "config", "`--config` file that does not exist",
        lambda c: [*TRAIN, "--config", c.tmp / "nope.toml", "--out", c.out], "does not exist"),
    Row("config-unknown-key", "config", "unknown key (`n_layers = 3`)",
        lambda c: [*TRAIN, "--config", c.file("c.toml", "[model]\nn_layers = 3\n"), "--out",
                   c.out], "unknown model setting(s) n_layers"),
    Row("config-unknown-section", "config", "unknown section (`[optim]`)",
        lambda c: [*TRAIN, "--config", c.file("c.toml", "[optim]\nlr = 1\n"), "--out", c.out],
        "unknown section(s) optim"),
    Row("config-type", "config", "wrong type (`n_layer = \"two\"`)",
        lambda c: [*TRAIN, "--config", c.file("c.toml", '[model]\nn_layer = "two"\n'), "--out",
                   c.out], "n_layer must be a whole number"),
    Row("config-toml", "config", "not TOML",
        lambda c: [*TRAIN, "--config", c.file("c.toml", "[model\nn_layer = 2\n"), "--out",
                   c.out], "not valid TOML"),
    Row("config-binary", "config", "binary, not UTF-8",
        lambda c: [*TRAIN, "--config", c.file("c.toml", b"\xff\xfe\x00\x81"), "--out", c.out],
        "cannot be read as UTF-8"),
    Row("config-absurd", "config", "absurd sizes (d_model 10**9, n_layer 10**6)",
        lambda c: [*TRAIN, "--config", c.file("c.toml", "[model]\nd_model = 1000000000\n"
                                              "n_layer = 1000000\n"), "--out", c.out],
        "must be between"),
    Row("config-preset-type", "config", "a preset that is not a name (`preset = [1]`)",
        lambda c: [*TRAIN[:1], "--config", c.file("c.toml", "preset = [1]\n"), "--out", c.out],
        "unknown preset"),
    # train: resume and init-from
    Row("resume-nothing", "train", "`--resume` where there is no run",
        lambda c: ["train", "--resume", "--out", c.tmp / "x"], "cannot resume"),
    Row("resume-change", "train", "`--resume` changing the model (`--n-layer 3`)",
        lambda c: ["train", "--resume", "--out", c.ckpt, "--n-layer", "3"],
        "with changed settings (--n-layer 2 -> 3)"),
    Row("resume-no-state", "train", "`--resume` of a checkpoint without trainer state "
        "(e.g. imported)", lambda c: ["train", "--resume", "--quiet", "--out",
                                      c.copy(remove("trainer_state.safetensors"))],
        "--init-from"),
    Row("resume-no-tokenizer", "train", "`--resume` of a run killed before it saved anything",
        lambda c: ["train", "--resume", "--out", c.copy(lambda d: [
            (d / n).unlink() for n in ("trainer_state.safetensors", "model.safetensors",
                                       "best.safetensors", "tokenizer.json")])],
        "stopped before its first checkpoint"),
    Row("resume-truncated", "train", "`--resume` with a truncated trainer_state",
        lambda c: ["train", "--resume", "--out", c.copy(truncate("trainer_state.safetensors",
                                                                  300))],
        "corrupt or truncated"),
    Row("resume-pickle", "train", "`--resume` with a pickle as trainer_state",
        lambda c: ["train", "--resume", "--out", c.copy(write("trainer_state.safetensors",
                                                               pickle_bomb()))],
        "corrupt or truncated"),
    Row("resume-mismatch", "train", "`--resume` whose config.json does not match its tensors",
        lambda c: ["train", "--resume", "--out", c.copy(edit_config(model__n_layer=3))],
        "missing tensor(s) blocks.2"),
    Row("resume-vocab-zero", "train", "`--resume` whose config.json has `vocab_size` 0",
        lambda c: ["train", "--resume", "--out", c.copy(edit_config(model__vocab_size=0))],
        "gives no vocab_size"),
    Row("init-from-vocab-zero", "train", "`--init-from` whose config.json has `vocab_size` 0",
        lambda c: t(c, "--init-from", c.copy(edit_config(model__vocab_size=0))),
        "gives no vocab_size"),
    Row("resume-moments", "train", "`--resume` with an optimizer moment of the wrong shape",
        lambda c: ["train", "--resume", "--quiet", "--out", c.copy(tensors(
            "trainer_state.safetensors",
            lambda s: s.__setitem__("optim.0.exp_avg", torch.zeros(3, 3))))],
        "optimizer tensor optim.0.exp_avg has shape"),
    Row("init-from-missing", "train", "`--init-from` directory that does not exist",
        lambda c: t(c, "--init-from", c.tmp / "nope"), "does not exist"),
    Row("init-from-shapes", "train", "`--init-from` while changing its shapes (`--n-layer 3`)",
        lambda c: t(c, "--init-from", c.ckpt, "--n-layer", "3"), "only --dropout may change"),
    # sample
    Row("sample-missing", "sample", "`--ckpt` that does not exist",
        lambda c: ["sample", "--ckpt", c.tmp / "missing"], "does not exist"),
    Row("sample-top-p", "sample", "out of range (`--top-p 0`)",
        lambda c: ["sample", "--ckpt", c.ckpt, "--top-p", "0"], "--top-p must be in (0, 1]"),
    Row("sample-temperature", "sample", "negative temperature",
        lambda c: ["sample", "--ckpt", c.ckpt, "--temperature", "-0.5"], "temperature"),
    Row("sample-tokens", "sample", "negative `--max-new-tokens`",
        lambda c: ["sample", "--ckpt", c.ckpt, "--max-new-tokens", "-1"], "--max-new-tokens"),
    Row("sample-num", "sample", "`--num-samples 0`",
        lambda c: ["sample", "--ckpt", c.ckpt, "--num-samples", "0"], "num-samples"),
    Row("sample-prompt", "sample", "prompt with characters the tokenizer does not know",
        lambda c: ["sample", "--ckpt", c.ckpt, "--prompt", "Zebra€ 東京"],
        "does not know the character"),
    Row("ckpt-truncated", "sample", "truncated model.safetensors",
        lambda c: ["sample", "--ckpt", c.copy(truncate("model.safetensors", 200))],
        "corrupt or truncated"),
    Row("ckpt-missing-tensor", "sample", "model.safetensors missing a tensor",
        lambda c: ["sample", "--ckpt", c.copy(tensors("model.safetensors",
                                                      lambda s: s.pop("ln_f.bias")))],
        "missing tensor(s) ln_f.bias"),
    Row("ckpt-extra-tensor", "sample", "model.safetensors with a tensor its config lacks",
        lambda c: ["sample", "--ckpt", c.copy(tensors("model.safetensors", lambda s: s.__setitem__(
            "evil.weight", torch.zeros(2))))], "evil.weight"),
    Row("ckpt-shape-mismatch", "sample", "config.json that does not match the tensors "
        "(`d_model` changed)", lambda c: ["sample", "--ckpt", c.copy(edit_config(
            model__d_model=32, model__d_ff=128))], "but the config implies"),
    Row("ckpt-nan", "sample", "weights holding NaN",
        lambda c: ["sample", "--ckpt", c.copy(tensors("model.safetensors", lambda s: s[
            "ln_f.weight"].fill_(float("nan"))))], "NaN or infinite"),
    Row("ckpt-pickle", "sample", "a pickle saved as model.safetensors",
        lambda c: ["sample", "--ckpt", c.copy(write("model.safetensors", pickle_bomb()))],
        "corrupt or truncated", sub=True),
    Row("ckpt-no-weights", "sample", "checkpoint without model.safetensors",
        lambda c: ["sample", "--ckpt", c.copy(remove("model.safetensors"))],
        "model.safetensors is missing"),
    Row("ckpt-no-best", "sample", "`--which best` before the run's first evaluation",
        lambda c: ["sample", "--which", "best", "--ckpt", c.copy(remove("best.safetensors"))],
        "has not been evaluated"),
    Row("ckpt-no-config", "sample", "checkpoint without config.json",
        lambda c: ["sample", "--ckpt", c.copy(remove("config.json"))], "config.json is missing"),
    Row("ckpt-config-empty", "sample", "empty config.json",
        lambda c: ["sample", "--ckpt", c.copy(write("config.json", ""))], "not readable JSON"),
    Row("ckpt-config-binary", "sample", "config.json that is binary / not UTF-8",
        lambda c: ["sample", "--ckpt", c.copy(write("config.json", b"\xff\x00\x81"))],
        "not readable JSON"),
    Row("ckpt-config-foreign", "sample", "config.json of another program",
        lambda c: ["sample", "--ckpt", c.copy(write("config.json", '{"model_type": "gpt2"}'))],
        "not a minigpt checkpoint config"),
    Row("ckpt-config-key", "sample", "config.json with an unknown key",
        lambda c: ["sample", "--ckpt", c.copy(edit_config(model__n_layers=3))],
        "unknown model setting(s) n_layers"),
    Row("ckpt-config-type", "sample", "config.json with a wrong type",
        lambda c: ["sample", "--ckpt", c.copy(edit_config(model__n_head="two"))],
        "n_head must be a whole number"),
    Row("ckpt-config-absurd", "sample", "config.json with absurd sizes (vocab 10**12)",
        lambda c: ["sample", "--ckpt", c.copy(edit_config(
            model__d_model=10**9, model__n_layer=10**6, model__vocab_size=10**12))],
        "must be between"),
    Row("ckpt-config-big", "sample", "config.json with huge sizes under the limits "
        "(19 billion parameters) over small weights",
        lambda c: ["sample", "--ckpt", c.copy(edit_config(model__d_model=8192, model__d_ff=0,
                                                          model__n_layer=24, model__n_head=8))],
        "missing tensor(s)"),
    Row("tok-foreign", "sample", "tokenizer.json of another model",
        lambda c: ["sample", "--ckpt", c.copy(foreign_tokenizer)], "belongs to another model"),
    Row("tok-binary", "sample", "tokenizer.json that is binary",
        lambda c: ["sample", "--ckpt", c.copy(write("tokenizer.json", pickle_bomb()))],
        "not readable JSON"),
    Row("tok-missing", "sample", "checkpoint without tokenizer.json",
        lambda c: ["sample", "--ckpt", c.copy(remove("tokenizer.json"))], "does not exist"),
    Row("tok-malformed", "sample", "tokenizer.json with a malformed vocabulary",
        lambda c: ["sample", "--ckpt", c.copy(write(
            "tokenizer.json", '{"format": "minigpt-tokenizer", "type": "char", "chars": 7}'))],
        "not a valid minigpt tokenizer"),
    # viz
    Row("viz-pos", "viz", "unknown encoding (`--pos fourier`)",
        lambda c: ["viz", "--pos", "fourier", "--out", c.out], "invalid choice: 'fourier'"),
    Row("viz-trained", "viz", "a trained encoding without `--ckpt`",
        lambda c: ["viz", "--pos", "learned", "--out", c.out], "trained encoding"),
    Row("viz-nothing", "viz", "neither `--pos` nor `--ckpt`",
        lambda c: ["viz", "--out", c.out], "say what to draw"),
    Row("viz-size", "viz", "out of range (`--block-size 0`)",
        lambda c: ["viz", "--pos", "rope", "--block-size", "0", "--out", c.out],
        "--block-size must be between"),
    Row("viz-ckpt-preset", "viz", "`--preset` together with `--ckpt`",
        lambda c: ["viz", "--ckpt", c.ckpt, "--preset", "tiny", "--out", c.out],
        "applies only to an untrained"),
    Row("viz-ckpt-pos", "viz", "`--pos` that is not the checkpoint's",
        lambda c: ["viz", "--ckpt", c.ckpt, "--pos", "rope", "--out", c.out],
        "does not match the checkpoint"),
    Row("viz-prompt", "viz", "prompt with characters the tokenizer does not know",
        lambda c: ["viz", "--ckpt", c.ckpt, "--prompt", "Zebra€", "--out", c.out],
        "does not know the character", sub=True),
    Row("viz-prompt-alone", "viz", "`--prompt` without `--ckpt`",
        lambda c: ["viz", "--pos", "rope", "--prompt", "hi", "--out", c.out], "give --ckpt"),
    Row("viz-out-file", "viz", "`--out` that is a file",
        lambda c: ["viz", "--pos", "rope", "--block-size", "8", "--d-model", "8", "--n-head",
                   "2", "--out", c.file("pics", "x")], "is a file"),
    Row("viz-ckpt-truncated", "viz", "truncated checkpoint",
        lambda c: ["viz", "--ckpt", c.copy(truncate("model.safetensors", 100)), "--out",
                   c.out], "corrupt or truncated"),
    # bench
    Row("bench-preset", "bench", "unknown preset",
        lambda c: ["bench", "--preset", "huge", "--out", c.out / "b.json"], "unknown preset",
        sub=True),
    Row("bench-threads", "bench", "`--threads 0`",
        lambda c: ["bench", "--threads", "0", "--out", c.out / "b.json"], "--threads"),
    Row("bench-reps", "bench", "`--reps 0`",
        lambda c: ["bench", "--reps", "0", "--out", c.out / "b.json"], "--reps"),
    Row("bench-tokens", "bench", "`--gen-tokens 0`",
        lambda c: ["bench", "--gen-tokens", "0", "--out", c.out / "b.json"], "--gen-tokens"),
    Row("bench-batch", "bench", "out of range (`--batch-size 0`)",
        lambda c: ["bench", "--batch-size", "0", "--out", c.out / "b.json"],
        "--batch-size must be between"),
    Row("bench-device", "bench", "a device this machine lacks (`--device cuda:7`)",
        lambda c: ["bench", "--device", "cuda:7", "--out", c.out / "b.json"], "not available"),
    # compare
    Row("compare-pos", "compare", "unknown encoding (`--pos fourier`)",
        lambda c: ["compare", "--pos", "fourier", "--out", c.out], "unknown encoding(s) fourier",
        sub=True),
    Row("compare-pos-empty", "compare", "no encoding (`--pos ,`)",
        lambda c: ["compare", "--pos", ",", "--out", c.out], "at least one"),
    Row("compare-seeds", "compare", "`--seeds 0`",
        lambda c: ["compare", "--seeds", "0", "--out", c.out], "--seeds must be"),
    Row("compare-tokens", "compare", "`--eval-tokens 0`",
        lambda c: ["compare", "--eval-tokens", "0", "--out", c.out], "--eval-tokens"),
    Row("compare-stride", "compare", "`--eval-stride` over L/2",
        lambda c: ["compare", "--eval-stride", "40", "--out", c.out], "--eval-stride"),
    Row("compare-task", "compare", "unknown `--task`",
        lambda c: ["compare", "--task", "sort", "--out", c.out], "unknown task"),
    Row("compare-task-lengths", "compare", "malformed task `--lengths`",
        lambda c: ["compare", "--task", "copy", "--lengths", "0,x", "--out", c.out],
        "--lengths"),
    Row("compare-lengths", "compare", "malformed `--lengths` (`0x,abc`)",
        lambda c: ["compare", "--lengths", "0x,abc", "--out", c.out], "--lengths"),
    Row("compare-preset", "compare", "unknown study preset",
        lambda c: ["compare", "--preset", "huge", "--out", c.out], "study presets"),
    Row("compare-data", "compare", "`--data` that does not exist",
        lambda c: ["compare", "--pos", "rope", "--data", c.tmp / "nope.txt", "--out", c.out,
                   "--quiet"], "does not exist"),
    Row("compare-model", "compare", "out-of-range model flag (`--n-head 0`)",
        lambda c: ["compare", "--n-head", "0", "--out", c.out], "--n-head must be between"),
    # export
    Row("export-missing", "export", "`--ckpt` that does not exist",
        lambda c: ["export", "--ckpt", c.tmp / "nope", "--out", c.out], "does not exist"),
    Row("export-pos", "export", "an encoding Hugging Face cannot compute (alibi)",
        lambda c: ["export", "--ckpt", c.copy(edit_config(model__pos="alibi")), "--out",
                   c.out], "cannot be exported"),
    Row("export-out", "export", "`--out` holding a model already (never overwritten)",
        lambda c: ["export", "--ckpt", c.ckpt, "--out", c.ckpt], "already holds"),
    Row("export-out-file", "export", "`--out` that is a file",
        lambda c: ["export", "--ckpt", c.ckpt, "--out", c.file("f", "x")], "is a file"),
    Row("export-truncated", "export", "truncated checkpoint",
        lambda c: ["export", "--ckpt", c.copy(truncate("model.safetensors", 100)), "--out",
                   c.out], "corrupt or truncated"),
    # import
    Row("import-missing", "import", "a directory that does not exist",
        lambda c: ["import", c.tmp / "nope", "--out", c.out], "is not a directory", sub=True),
    Row("import-no-config", "import", "a directory without config.json",
        lambda c: ["import", c.hf_dir(None), "--out", c.out], "has no config.json"),
    Row("import-config-json", "import", "config.json that is not JSON",
        lambda c: ["import", c.hf_dir("{nope"), "--out", c.out], "not readable JSON"),
    Row("import-type", "import", "a model type minigpt cannot import (llama)",
        lambda c: ["import", c.hf_dir({"model_type": "llama", "architectures": [
            "LlamaForCausalLM"]}), "--out", c.out], "imports only GPT-2"),
    Row("import-sizes", "import", "absurd sizes in config.json",
        lambda c: ["import", c.hf_dir({**GPT2, "n_embd": 10**9}), "--out", c.out],
        "d_model must be between"),
    Row("import-field-type", "import", "a wrong type in config.json (`n_layer: \"2\"`)",
        lambda c: ["import", c.hf_dir({**GPT2, "n_layer": "2"}), "--out", c.out],
        "unexpected value"),
    Row("import-pickle", "import", "weights only as pickle (pytorch_model.bin)",
        lambda c: ["import", c.hf_dir(GPT2, {"pytorch_model.bin": pickle_bomb()}), "--out",
                   c.out], "minigpt reads safetensors only"),
    Row("import-truncated", "import", "truncated model.safetensors",
        lambda c: ["import", c.hf_dir(GPT2, {"model.safetensors": b"\x10\x00\x00\x00\x00\x00"
                                                                  b"\x00\x00{\"a\":"},
                                      tokenizer=True), "--out", c.out],
        "corrupt or truncated"),
    Row("import-shapes", "import", "weights whose shapes do not match config.json",
        lambda c: ["import", c.hf_dir({**GPT2, "n_embd": 32}, {"model.safetensors":
                                                               hf_weights(c)}, tokenizer=True),
                   "--out", c.out], "but its config.json implies"),
    Row("import-big", "import", "huge sizes under the limits (3 billion parameters) over "
        "small weights", lambda c: ["import", c.hf_dir(
            {**GPT2, "n_embd": 16384, "n_head": 8}, {"model.safetensors": hf_weights(c)},
            tokenizer=True), "--out", c.out], "but its config.json implies"),
    Row("import-minigpt", "import", "a minigpt checkpoint given as a Hugging Face directory",
        lambda c: ["import", c.ckpt, "--out", c.out], "already a minigpt checkpoint"),
    Row("import-out", "import", "`--out` holding a run already (never overwritten)",
        lambda c: ["import", c.hf_dir(GPT2), "--out", c.ckpt], "already holds"),
    # paths that point the wrong way (issue 23)
    Row("sample-ckpt-file", "sample", "`--ckpt` naming model.safetensors, not its directory",
        lambda c: ["sample", "--ckpt", c.ckpt / "model.safetensors"],
        "is a file; give the checkpoint directory that holds it"),
    Row("sample-study", "sample", "`--ckpt` naming a study folder (a `compare` output)",
        lambda c: ["sample", "--ckpt", study(c)], "is a study (minigpt compare output)"),
    Row("serve-study-as-ckpt", "serve", "`--ckpt` naming a study folder (not `--study`)",
        lambda c: ["serve", "--ckpt", study(c)], "serve them all with minigpt serve --study"),
    Row("sample-typed-newline", "sample",
        "a typed `\\n` in the prompt (`--prompt 'ALL:\\nWe'`)",
        lambda c: ["sample", "--ckpt", c.ckpt, "--prompt", "ALL:\\nWe"],
        "'\\' (a backslash) (it knows"),
    # any command
    Row("unknown-command", "any", "unknown command (`trian`)",
        lambda c: ["trian"], "invalid choice"),
]


def study(c: Ctx) -> Path:
    """A folder laid out as a `minigpt compare` output holding a copy of the fixture run."""
    d = c.tmp / "study"
    shutil.copytree(c.ckpt, d / "runs" / "learned-s0")
    return d


def call(argv: list, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_sentence(code: int, err: str, match: str) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minigpt"), err
    assert match.lower() in lines[0].lower(), err


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, base: Path, tmp_path: Path, capsys) -> None:
    ctx = Ctx(base, tmp_path)
    argv = row.argv(ctx)
    before_base, before_tmp = snapshot(base), snapshot(tmp_path)
    code, out, err = call(argv, capsys)
    assert_one_sentence(code, err, row.match)
    assert "minigpt train:" not in out  # no settings header for a run that never starts
    if row.sub:
        r = run_cli(*argv)
        assert_one_sentence(r.returncode, r.stderr, row.match)
    assert snapshot(base) == before_base  # the fixture checkpoint is untouched
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before_tmp} == before_tmp  # no input changed or vanished
    assert not [p for p in after if p.endswith(".tmp")]  # and no temporary file is left


def test_enough_rows_across_every_command() -> None:
    commands = {r.command for r in ROWS}
    assert {"train", "sample", "compare", "viz", "bench", "export", "import",
            "config"} <= commands
    assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)


def test_the_doc_table_lists_every_row() -> None:
    doc = (ROOT / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    missing = [r.id for r in ROWS if f"`{r.id}`" not in doc]
    assert not missing, f"docs/bad-inputs.md lacks rows {missing}"
    listed = re.findall(r"^\| \d+ \| .* \| `([\w-]+)`(?: \(\+ subprocess\))? \|$", doc,
                        re.M)
    assert sorted(listed) == sorted(r.id for r in ROWS)  # one row per case, none left over


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    text = d / "c.txt"
    text.write_text("ALL:\nSpeak, speak.\n\n" * 200)
    out = d / "run"
    train(tiny_config(text), out, progress=False)
    return out


def assert_clean_error(r, match: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr
    assert len(err.splitlines()) == 1, err
    assert match.lower() in err.lower(), err


def test_train_bad_inputs(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("hey there\n" * 20)
    base = ["train", "--preset", "tiny", "--quiet", "--out", tmp_path / "o"]
    cases = [
        (["--data", tmp_path / "missing.txt"], "does not exist"),
        (["--data", empty], "empty"),
        (["--data", short, "--block-size", "500"], "fewer than block_size"),
        (["--data", corpus, "--d-model", "30", "--n-head", "4"], "divisible by n_head"),
        (["--data", corpus, "--dropout", "1.5"], "dropout"),
        (["--data", corpus, "--batch-size", "0"], "--batch-size must be between"),
        (["--preset", "huge"], "unknown preset"),
        (["--data", corpus, "--pos", "fourier"], "invalid choice"),
        (["--data", corpus, "--tokenizer", "sentencepiece"], "invalid choice"),
        (["--data", corpus, "--n-layer", "two"], "invalid int value"),
        (["--config", tmp_path / "nope.toml"], "does not exist"),
    ]
    for extra, match in cases:
        assert_clean_error(run_cli(*base, *extra), match)
    assert not (tmp_path / "o" / "config.json").exists()


def test_config_file_with_unknown_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layers = 3\n")
    assert_clean_error(run_cli("train", "--config", f, "--out", tmp_path / "o"),
                       "unknown model setting(s) n_layers")


def test_existing_run_is_not_overwritten(ckpt, corpus):
    before = snapshot(ckpt)
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--out", ckpt, "--quiet")
    assert_clean_error(r, "already holds a run")
    assert snapshot(ckpt) == before


def test_sample_bad_inputs(ckpt, tmp_path):
    before = snapshot(ckpt)
    base = ["sample", "--ckpt", ckpt, "--max-new-tokens", "5"]
    cases = [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "-0.5"], "temperature"),
        (["--prompt", "Zebra€"], "does not know the character"),
        (["--num-samples", "0"], "num-samples"),
    ]
    for extra, match in cases:
        assert_clean_error(run_cli(*base, *extra), match)
    assert_clean_error(run_cli("sample", "--ckpt", tmp_path / "missing"), "does not exist")
    assert snapshot(ckpt) == before


def test_incomplete_and_corrupt_checkpoints(ckpt, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:200])
    assert_clean_error(run_cli("sample", "--ckpt", broken), "corrupt or truncated")
    (broken / "model.safetensors").unlink()
    assert_clean_error(run_cli("sample", "--ckpt", broken), "model.safetensors is missing")
    (broken / "config.json").unlink()
    assert_clean_error(run_cli("sample", "--ckpt", broken), "config.json is missing")


def test_resume_without_a_run(tmp_path):
    assert_clean_error(run_cli("train", "--resume", "--out", tmp_path / "x"), "cannot resume")


def test_unknown_command_and_flag():
    assert_clean_error(run_cli("trian"), "invalid choice")
    assert_clean_error(run_cli("train", "--n-layerz", "2"), "unrecognized arguments")


def test_library_errors_name_arguments_and_the_cli_names_flags(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus), out, until=1, progress=False)
    with pytest.raises(MiniGPTError) as e:
        train(tiny_config(corpus), out, progress=False)
    assert "pass resume=True" in str(e.value) and "--" not in str(e.value)
    assert "pass --resume" in e.value.for_cli()
    with pytest.raises(ConfigError, match=r"max_steps is a train setting.*train=\{\.\.\.\}"):
        merge(preset("small"), {"max_steps": 500})
    assert merge(preset("small"), train={"max_steps": 500}).train.max_steps == 500
