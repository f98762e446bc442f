"""Nothing lost under crashes, interrupts or failed writes; nothing executed from a file.

- SIGKILL at random moments (and inside checkpoint writes) always leaves a checkpoint that
  loads and resumes, and the finished run equals one that was never interrupted;
- SIGTERM finishes the step, saves and says how to resume;
- a failed write (the file-size limit, as a full disk) stops with one sentence and leaves
  the last checkpoint byte-identical; so does a loss that becomes NaN;
- a pickle planted as a checkpoint, trainer state, tokenizer or HF weights never runs, and a
  config claiming absurd sizes is refused before anything is allocated;
- property tests: config parsing never fails with anything but a ConfigError, valid configs
  round-trip, tokenizer files round-trip.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_TEXT, interrupt_training, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt import checkpoint
from minigpt.cli import main
from minigpt.config import PRESETS, ModelConfig, RunConfig, TrainConfig, load_toml
from minigpt.errors import ConfigError, DataError, MiniGPTError
from minigpt.files import atomic_write_bytes, atomic_write_text, staged_dir
from minigpt.training import train

SRC = Path(__file__).resolve().parents[1] / "src" / "minigpt"
STATE = checkpoint.STATE_FILE


def sha(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


TINY = ["--preset", "tiny", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
        "--block-size", "16", "--eval-iters", "1", "--log-interval", "1", "--quiet",
        "--sample-tokens", "0", "--dtype", "float32", "--device", "cpu"]


# --- SIGKILL at any moment ---------------------------------------------------------------------

def _cli_child(argv: list[str], log: str, slow_disk: float = 0.0) -> None:
    """A `minigpt` process started by the fork server (torch already imported: fast).

    `slow_disk` makes every fsync wait that long first, as a slow disk would: a checkpoint
    file then stays a complete-but-unrenamed temporary file long enough for the test to see
    it and kill the process right inside the write.
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if slow_disk:
        fsync = os.fsync

        def slow_fsync(f: int) -> None:
            time.sleep(slow_disk)
            fsync(f)
        os.fsync = slow_fsync
    os._exit(main(argv))


def _new_files(d: Path, before: set[str], prefix: str) -> list[str]:
    try:
        now = set(os.listdir(d))
    except FileNotFoundError:
        return []
    return [n for n in now - before if n.startswith(prefix) and n.endswith(".tmp")]


def _unresumable(out: Path) -> bool:
    """Weights without a trainer state: what an imported checkpoint looks like, and what a
    kill must never leave (a checkpoint commits its trainer state before model.safetensors,
    so a run without a trainer state has saved nothing and restarts from step 0)."""
    return not (out / STATE).exists() and not checkpoint.never_saved(out)


def _verify(out: Path) -> int | None:
    """After a kill: every file complete, checkpoint loadable, trainer state resumable.

    Returns the step a resume starts from (None when the kill came before config.json).
    """
    from minigpt.model import GPT
    from minigpt.training import make_optimizer

    if not (out / "config.json").exists():
        assert not (out / STATE).exists()
        return None
    cfg, raw = checkpoint.read_config(out)  # complete JSON, valid config
    if not (out / "tokenizer.json").exists():  # killed between the first two files
        return None
    assert not _unresumable(out)
    model = GPT(cfg.model)
    opt = make_optimizer(model, cfg.train, torch.device("cpu"))
    with torch.random.fork_rng():
        state = checkpoint.load_trainer_state(out, model, opt)
    if (out / "model.safetensors").exists():
        _, _, _, _ = checkpoint.load(out)  # model.safetensors complete and consistent
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            weights_step = int(f.metadata()["step"])
        # committed in the order trainer state, model, config: each a whole file of its step
        assert state["step"] >= weights_step >= raw["step"] >= state["step"] - 1
    elif (out / STATE).exists():  # killed inside the first checkpoint, after its state
        assert raw["step"] == 0
    else:
        assert state["step"] == 0 and raw["step"] == 0  # restarts: nothing complete was saved
    return state["step"]


def test_sigkill_at_any_moment_leaves_a_resumable_checkpoint(tmp_path):
    """Kill -9 a training run again and again, at random moments and inside checkpoint writes
    (right after a temporary file appears, on a simulated slow disk); after every kill the
    checkpoint loads and the run resumes, and the finished run is bitwise the run that was
    never interrupted."""
    rng = random.Random(20240607)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    out, ref = tmp_path / "run", tmp_path / "ref"
    steps = 24
    common = ["--data", str(corpus), *TINY, "--max-steps", str(steps), "--eval-interval", "1"]
    fresh = ["train", *common, "--out", str(out)]
    resume = ["train", "--resume", "--out", str(out), "--quiet"]
    log = tmp_path / "children.log"

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.utils.tensorboard",
                                "minigpt.cli", "minigpt.training", "minigpt.plots",
                                "test_hardening"])

    def start(argv: list[str], slow_disk: float = 0.0) -> mp.Process:
        p = ctx.Process(target=_cli_child, args=(argv, str(log), slow_disk))
        p.start()
        return p

    def kill(p: mp.Process) -> None:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join()

    def wait_for(cond, p: mp.Process, timeout: float = 60) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and p.is_alive():
            if cond():
                return True
            time.sleep(0.0005)
        return False

    reference = start(["train", *common, "--out", str(ref)])  # never interrupted
    record: list[tuple[str, int | None, bool]] = []  # (when, resumable step, inside a write)

    def one_kill(when: str, argv: list[str], cond=None, delay: float = 0.0,
                 slow_disk: float = 0.0) -> None:
        before = set(os.listdir(out)) if out.exists() else set()
        p = start(argv, slow_disk)
        if cond is not None:
            assert wait_for(lambda: cond(before), p), log.read_text()
        time.sleep(delay)
        assert p.is_alive(), f"the run ended before kill {len(record) + 1}: {log.read_text()}"
        kill(p)
        inside = bool(_new_files(out, before, "."))  # it left a temporary file behind
        record.append((when, _verify(out), inside))

    def metrics_grew(n: int):
        start = len((out / "metrics.jsonl").read_text().splitlines())

        def cond(before: set[str]) -> bool:
            return len((out / "metrics.jsonl").read_text().splitlines()) >= start + n
        return cond

    def last_step() -> int:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
            return int(json.loads(lines[-1])["step"]) if lines else 0
        except (OSError, ValueError, KeyError):
            return 0

    def nth_temp(prefix: str, n: int):
        """True once the n-th new temporary file `prefix...tmp` was seen, or (where a fast
        disk makes them too short-lived to see) once the run is n steps further."""
        seen: set[str] = set()
        polls = [0]
        give_up = max(last_step(), _verify(out) or 0) + n if (out / STATE).exists() else None

        def cond(before: set[str]) -> bool:
            seen.update(_new_files(out, before, prefix))
            polls[0] += 1
            if give_up is not None and polls[0] % 50 == 0 and last_step() >= give_up:
                return True
            return len(seen) >= n
        return cond

    def restart() -> list[str]:
        """--resume, or where nothing resumable was saved yet: its refusal, then a new run."""
        if not (out / "config.json").exists():
            return fresh
        if not (out / "tokenizer.json").exists():
            assert main(resume) == 2  # one sentence (see test_bad_inputs): start over
            shutil.rmtree(out)
            return fresh
        return resume  # nothing saved yet, or a checkpoint: resumes

    # before the first checkpoint, then inside it: restarted from step 0
    one_kill("before the first checkpoint", fresh, lambda b: (out / "config.json").exists())
    assert record[-1][1] in (None, 0)
    one_kill("inside the first checkpoint", restart(), nth_temp(".trainer_state", 1),
             slow_disk=0.02)
    one_kill("after the first checkpoint", restart(), lambda b: (out / STATE).exists(), 0.05)
    for i in range(8):
        mode = ("trainer_state", "model", "config", "random")[i % 4]
        if mode == "random":  # during start-up, or a few metrics lines into training
            rows = rng.randint(0, 4)
            if rows == 0:
                one_kill("at a random moment", resume, None, rng.uniform(0.005, 0.15))
            else:
                one_kill("at a random moment", resume, metrics_grew(rows), rng.uniform(0, 0.02))
        else:
            one_kill(f"inside a {mode} write", resume, nth_temp("." + mode, rng.randint(1, 2)),
                     slow_disk=0.02)

    kills = len(record)
    inside = sum(w for _, _, w in record)
    resumed = [s for _, s, _ in record[2:]]
    assert kills >= 11 and inside >= 5, record
    assert None not in resumed and resumed == sorted(resumed), record  # never went back
    final = start(resume)  # and a last --resume finishes the run
    final.join(120)
    assert final.exitcode == 0 and f"step {steps}:" in log.read_text(), log.read_text()
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # stale temps cleared

    reference.join(120)
    assert reference.exitcode == 0, log.read_text()
    a = (out / "model.safetensors").read_bytes()
    assert a == (ref / "model.safetensors").read_bytes()  # nothing lost, nothing mixed
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    key = ("step", "train_loss", "val_loss")
    assert [[r.get(k) for k in key] for r in rows] == [[r.get(k) for k in key] for r in ref_rows]
    print(f"\n{kills} SIGKILLs survived ({inside} inside a write):")
    for when, step, w in record:
        print(f"  {when:32s} resumable from step {step}{' (temp file left)' if w else ''}")


# --- SIGTERM -----------------------------------------------------------------------------------

def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(corpus, tmp_path):
    out = tmp_path / "run"
    r = interrupt_training(out, signal.SIGTERM, "--data", corpus, *TINY)
    assert r.returncode == 0, r.stderr
    stdout = r.stdout
    m = re.search(r"stopped by SIGTERM at step (\d+); the checkpoint is saved in (\S+)\.\n",
                  stdout)
    assert m, stdout
    step = int(m.group(1))
    assert Path(m.group(2)) == out
    assert "to continue, run the same command with --resume: minigpt train --out" in stdout
    assert json.loads((out / "config.json").read_text())["step"] == step
    from minigpt.model import GPT
    from minigpt.training import make_optimizer

    _, _, cfg, _ = checkpoint.load(out)
    model = GPT(cfg.model)
    with torch.random.fork_rng():
        state = checkpoint.load_trainer_state(
            out, model, make_optimizer(model, cfg.train, torch.device("cpu")))
    assert state["step"] == step  # the state saved is the step that was reported


# --- failed writes and a diverging loss --------------------------------------------------------

def _limit_file_size() -> None:  # in the child: writes past 100 kB fail (EFBIG), as a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_failed_write_stops_with_a_sentence_and_keeps_the_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(corpus, model={"n_layer": 1, "d_model": 64},
                      train={"max_steps": 6, "eval_interval": 1})
    train(cfg, out, until=2, progress=False)
    assert (out / "model.safetensors").stat().st_size > 100_000  # over the limit below
    before = sha(out)
    r = subprocess.run([sys.executable, "-m", "minigpt", "train", "--resume", "--out", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_file_size, check=False)
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert re.search(r"writing \S+safetensors failed \(File too large\); the previous file is "
                     r"untouched\.", line), line
    after = sha(out)
    for name in ("model.safetensors", "best.safetensors", STATE, "config.json",
                 "tokenizer.json"):
        assert after[name] == before[name], name
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    res = train(checkpoint.read_config(out)[0], out, resume=True, progress=False)
    assert res.step == 6  # and it resumes once there is room again


def test_atomic_write_failures_are_one_sentence_and_leave_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MiniGPTError, match="cannot write to"):
        atomic_write_text(blocker / "config.json", "{}")  # the parent is a file (even as root)
    target = tmp_path / "model.safetensors"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(MiniGPTError, match=r"failed \(Is a directory\); the previous file"):
        atomic_write_bytes(target, b"new")
    assert (target / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model.safetensors"]
    good = tmp_path / "ok.json"
    atomic_write_text(good, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert good.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
        raise RuntimeError("crash mid-export")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_nan_loss_stops_the_run_and_keeps_the_good_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    # lr 10 with weight decay 10 multiplies every matrix by -99 per step: overflow in a few
    blow_up = ["--lr", "10", "--weight-decay", "10", "--grad-clip", "0", "--warmup-steps", "0"]
    argv = ["train", "--data", str(corpus), "--out", str(out), *TINY, *blow_up,
            "--max-steps", "50", "--eval-interval", "1"]
    assert main([*argv, "--until", "2"]) == 0
    before = sha(out)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.search(r"(NaN|nan|inf)", line) and re.search(r"step \d+", line), line
    assert "lower the learning rate" in line and "last good checkpoint was kept" in line
    after = sha(out)
    for name in ("model.safetensors", "best.safetensors", STATE, "config.json"):
        assert after[name] == before[name], name
    checkpoint.load(out)  # still a good checkpoint


# --- untrusted files: nothing unpickled, nothing allocated before the checks ---------------------

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


# --- property tests ----------------------------------------------------------------------------

MODEL_FIELDS = [f for f in ModelConfig.__dataclass_fields__]
TRAIN_FIELDS = [f for f in TrainConfig.__dataclass_fields__]
NAMES = ["learned", "rope", "alibi", "t5", "nope", "sinusoidal", "char", "bpe", "word", "cpu",
         "auto", "gelu", "gelu_tanh", "stream", "documents", "off", "float32", "cuda:0", ""]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**13, 10**13), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(NAMES),
    st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 0.5, 1e-3, 10**9, 10**12, 2.0, 16.0]))
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=2)), max_leaves=4)


def section(names: list[str]):
    keys = st.one_of(st.sampled_from(names), st.text(max_size=6))
    return st.one_of(st.dictionaries(keys, values, max_size=6), values)


config_dicts = st.one_of(
    st.fixed_dictionaries({}, optional={
        "model": section(MODEL_FIELDS), "train": section(TRAIN_FIELDS),
        "preset": st.one_of(st.sampled_from(list(PRESETS)), values)}),
    st.dictionaries(st.text(max_size=6), values, max_size=3), values)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(config_dicts)
def test_config_parsing_gives_a_valid_config_or_a_config_error(d):
    try:
        cfg = RunConfig.from_dict(d)
    except ConfigError:
        return
    m, t = cfg.model, cfg.train
    for name, typ in (("n_layer", int), ("d_model", int), ("block_size", int), ("pos", str)):
        assert type(getattr(m, name)) is typ
    assert type(t.lr) is float and m.d_model % m.n_head == 0 and 0 < t.lr <= 10
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # round trip
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # through JSON


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(
    lambda b: b.decode("latin-1"))))
def test_config_files_give_a_table_or_a_config_error(tmp_path_factory, text):
    p = tmp_path_factory.getbasetemp() / "fuzz.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        d = load_toml(p)
    except ConfigError:
        return
    assert isinstance(d, dict)
    try:
        RunConfig.from_dict(d)
    except ConfigError:
        pass


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
