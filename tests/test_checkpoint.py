"""The checkpoint directory as an untrusted file (checkpoint.py): nothing is ever
unpickled, sizes are checked before anything is allocated, and `--which best` before the first
evaluation says why there is none."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from conftest import SMALL_TEXT, TINY_ARGS, one_line, run_cli, tiny_config
from minigpt import checkpoint
from minigpt.cli import main
from minigpt.training import train


SRC = Path(__file__).resolve().parents[1] / "src" / "minigpt"


STATE = checkpoint.STATE_FILE


class _Bomb:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "joblib",
                  "shelve", "yaml"}


UNSAFE_KEYWORDS = {("weights_only", False), ("allow_pickle", True), ("trust_remote_code", True)}


def test_the_package_never_unpickles():
    """Static proof over the package's code (not its prose): no unpickler is reachable."""
    import ast

    hits = []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            where = f"{f.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                hits += [where for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in UNSAFE_MODULES:
                    hits.append(where)
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                owner = getattr(getattr(fn, "value", None), "id", "")
                if (isinstance(fn, ast.Name) and name in ("eval", "exec")) or \
                        name == "from_pretrained" or \
                        (name == "load" and owner in ("torch", "np", "numpy")):
                    hits.append(f"{where} {name}()")
                for kw in node.keywords:
                    if isinstance(kw.value, ast.Constant) and (kw.arg, kw.value.value) in \
                            UNSAFE_KEYWORDS:
                        hits.append(f"{where} {kw.arg}={kw.value.value}")
    assert not hits, hits


def test_a_planted_pickle_never_runs(tmp_path, capsys, monkeypatch):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Bomb(live)))
    assert live.exists()  # the payload is real: unpickling it would run it

    marker = tmp_path / "pwned"
    raw = pickle.dumps(_Bomb(marker))
    bin_path = tmp_path / "torch.bin"
    torch.save(_Bomb(marker), bin_path)  # the pytorch_model.bin format: a zip with a pickle
    assert not marker.exists()

    corpus = tmp_path / "c.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    good = tmp_path / "good"
    # trained before the guard below: torch imports modules lazily (torch._dynamo subclasses
    # pickle.Unpickler), and an import broken by the guard would break the whole process
    train(tiny_config(corpus, train={"max_steps": 2, "eval_interval": 2}), good, progress=False)

    # every unpickler the load paths could reach raises (and would show up as a traceback)
    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)

    def planted(name: str, data: bytes, tag: str = "") -> Path:
        d = tmp_path / f"with-{name}{tag}"
        shutil.copytree(good, d)
        (d / name).write_bytes(data)
        return d

    torch_bytes = bin_path.read_bytes()
    cases = [
        (["sample", "--ckpt", planted("model.safetensors", raw)], "corrupt or truncated"),
        (["sample", "--ckpt", planted("best.safetensors", torch_bytes), "--which", "best"],
         "corrupt or truncated"),
        (["train", "--resume", "--out", planted(STATE, raw)], "corrupt or truncated"),
        (["train", "--resume", "--out", planted(STATE, torch_bytes, "-zip")],
         "corrupt or truncated"),
        (["sample", "--ckpt", planted("tokenizer.json", raw)], "not readable JSON"),
        (["viz", "--ckpt", planted("config.json", raw), "--out", tmp_path / "v"],
         "not readable JSON"),
    ]
    from minigpt.hf import tokenizer_to_hf_backend
    from minigpt.tokenizers import load_tokenizer

    tok = load_tokenizer(good / "tokenizer.json")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16,
        "vocab_size": tok.vocab_size}))
    (hf / "tokenizer.json").write_text(tokenizer_to_hf_backend(tok).to_str())
    (hf / "pytorch_model.bin").write_bytes(torch_bytes)
    cases.append((["import", hf, "--out", tmp_path / "imported"], "safetensors only"))
    hf2 = tmp_path / "hf2"
    shutil.copytree(hf, hf2)
    (hf2 / "model.safetensors").write_bytes(raw)
    cases.append((["import", hf2, "--out", tmp_path / "imported2"], "corrupt or truncated"))
    for argv, match in cases:
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2, argv
        assert match in one_line(capsys.readouterr().err), argv
        assert not marker.exists(), argv
    assert not (tmp_path / "imported").exists() and not (tmp_path / "imported2").exists()


ABSURD_SCRIPT = r"""
import json, resource, sys, time
from minigpt.cli import main
codes = []
t0 = time.perf_counter()
for argv in json.loads(sys.argv[1]):
    codes.append(main(argv))
print(json.dumps({"codes": codes, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_absurd_sizes_are_refused_before_any_allocation(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    good = tmp_path / "good"
    train(tiny_config(corpus, train={"max_steps": 2, "eval_interval": 2}), good, progress=False)

    def with_model(name: str, **model) -> str:
        d = tmp_path / name
        shutil.copytree(good, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"].update(model)
        (d / "config.json").write_text(json.dumps(cfg))
        return str(d)

    absurd = with_model("absurd", d_model=10**9, n_layer=10**6, vocab_size=10**12)
    # inside every limit, yet 19 billion parameters (77 GB): only the file's header says no
    big = with_model("big", d_model=8192, d_ff=0, n_layer=24, n_head=8)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 10**9,
                                                "n_layer": 10**6, "vocab_size": 10**12}))
    runs = [["sample", "--ckpt", absurd], ["sample", "--ckpt", big],
            ["train", "--resume", "--out", absurd], ["train", "--resume", "--out", big],
            ["train", "--init-from", big, "--data", str(corpus), "--out", str(tmp_path / "ft")],
            ["viz", "--ckpt", big, "--out", str(tmp_path / "v")],
            ["export", "--ckpt", big, "--out", str(tmp_path / "e")],
            ["import", str(hf), "--out", str(tmp_path / "i")]]
    r = subprocess.run([sys.executable, "-c", ABSURD_SCRIPT, json.dumps(runs)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["codes"] == [2] * len(runs), r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == len(runs) and "Traceback" not in r.stderr, r.stderr
    assert res["peak_mb"] < 2048, res  # python + torch; a 19e9-parameter model is 77 GB
    assert res["seconds"] < 60, res


def test_which_best_before_the_first_evaluation_says_why(corpus, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY_ARGS, "--data", corpus, "--out", out, "--until", "2", "--quiet",
                "--eval-interval", "100")
    assert r.returncode == 0, r.stderr
    assert "inf" not in r.stdout and "step 2: no evaluation yet" in r.stdout
    r = run_cli("sample", "--ckpt", out, "--which", "best")
    assert r.returncode == 2
    assert "has not been evaluated" in r.stderr and "--which last" in r.stderr
    assert run_cli("sample", "--ckpt", out, "--which", "last",
                   "--max-new-tokens", "3").returncode == 0
