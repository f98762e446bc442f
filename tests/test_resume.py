"""Interrupting, resuming and starting from a checkpoint (training.resume_config and
init_config, the trainer state, signals): nothing lost under SIGKILL, SIGINT or SIGTERM, a
failed write or a NaN loss; a resume is bitwise the run that was never interrupted; the same
command with --resume accepts the same settings and names each real change; --init-from takes
the checkpoint's model settings. Processes and signals are tested through a real `minigpt`
process."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL_TEXT, TINY_ARGS, interrupt_training, one_line, run_cli, tiny_config
from minigpt import checkpoint
from minigpt.checkpoint import STATE_FILE, never_saved, read_config
from minigpt.cli import main
from minigpt.errors import CheckpointError, ConfigError
from minigpt.positional import REGISTRY
from minigpt.training import train


STATE = checkpoint.STATE_FILE


def sha(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


TINY = [*TINY_ARGS, "--log-interval", "1", "--quiet"]


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
                                "test_resume"])

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
            assert main(resume) == 2  # one sentence (see test_cli_errors): start over
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


def test_resume_accepts_the_same_settings_and_names_each_real_change(corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(corpus)
    train(cfg, out, until=3, progress=False)
    with pytest.raises(ConfigError) as e:  # the API names arguments and old -> new values
        train(tiny_config(corpus, train={"lr": 0.002}, model={"n_layer": 3}), out, resume=True,
              progress=False)
    msg = str(e.value)
    assert "lr 0.003 -> 0.002" in msg and "n_layer 2 -> 3" in msg and "--" not in msg
    # the same config (vocab_size left at 0) and a new max_steps: accepted
    res = train(tiny_config(corpus, train={"max_steps": 8}), out, resume=True, progress=False)
    assert res.step == 8
    assert json.loads((out / "config.json").read_text())["train"]["max_steps"] == 8


def test_cli_resume_with_preset_and_repeated_flags(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = ["train", *TINY_ARGS, "--data", corpus, "--out", out, "--quiet", "--lr", "0.003",
           "--eval-interval", "2"]
    r = run_cli(*cmd, "--until", "2")
    assert r.returncode == 0, r.stderr
    r = run_cli(*cmd, "--resume", "--max-steps", "5")  # preset, data, lr repeated: fine
    assert r.returncode == 0, r.stderr
    assert "step 5:" in r.stdout
    r = run_cli(*cmd, "--resume", "--lr", "0.005", "--max-steps", "6")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--lr 0.003 -> 0.005" in r.stderr and "--max-steps" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(*cmd)  # without --resume: told to pass it, which works (above)
    assert r.returncode == 2 and "pass --resume" in r.stderr


@pytest.mark.parametrize("when", ["back-to-back", "during-save"])
def test_two_sigints_leave_a_run_that_resumes(corpus, tmp_path, when):
    """SIGINT, then SIGINT again: at once, or as soon as the run says it is saving (a model
    big enough that writing it takes a while). The run is saved whole or not at all, never
    half, and the same command with --resume continues it (from step 0 if nothing was
    saved, saying so)."""
    out = tmp_path / "run"
    cmd = ["train", *TINY_ARGS, "--d-model", "256", "--n-layer", "4", "--n-head", "4",
           "--data", str(corpus), "--out", str(out)]
    endless = ["--max-steps", "100000", "--eval-interval", "100000", "--log-interval", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", *cmd, *endless],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = ""
    if when == "during-save":
        for line in proc.stderr:
            err += line
            if line.startswith("saving checkpoint, Ctrl-C again to abandon this save"):
                break
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    stderr = err + rest
    assert proc.returncode in (0, 130), stderr
    assert "Traceback" not in stderr
    files = {p.name for p in out.iterdir()}
    assert not [n for n in files if n.endswith(".tmp")]
    if STATE_FILE in files:  # the save won the race: a complete checkpoint
        assert "model.safetensors" in files
        step = json.loads((out / "config.json").read_text())["step"]
        assert step > 0
    else:  # abandoned: nothing of the save is left, and the run says so
        assert "no checkpoint was saved yet" in stdout
        assert "model.safetensors" not in files and never_saved(out)
        step = 0
    r = run_cli(*cmd, "--max-steps", str(step + 2), "--resume")
    assert r.returncode == 0, r.stderr
    if STATE_FILE not in files:
        assert "no complete checkpoint yet; training it again from step 0" in r.stdout
    assert f"step {step + 2}:" in r.stdout


def test_an_init_from_run_with_nothing_saved_restarts_from_its_source(corpus, tmp_path, capsys):
    from safetensors.torch import load_file

    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    cfg = tiny_config(corpus, train={"max_steps": 3})
    train(cfg, tmp_path / "ref", init_from=src, progress=False)
    out = tmp_path / "ft"
    train(cfg, out, init_from=src, until=1, progress=False)
    for name in (STATE_FILE, "model.safetensors", "best.safetensors"):  # as if killed before
        (out / name).unlink(missing_ok=True)                             # its first save
    capsys.readouterr()
    res = train(cfg, out, resume=True, progress=False)
    assert "no complete checkpoint yet; training it again from step 0" in capsys.readouterr().out
    assert res.step == 3
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)  # started again from src's weights, exactly


def test_resume_reuses_the_token_cache(corpus, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIGPT_CACHE", str(cache))
    out = tmp_path / "run"
    train(tiny_config(corpus), out, until=2, progress=True)
    assert "tokenizing" in capsys.readouterr().out
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1
    train(tiny_config(corpus), out, resume=True, progress=True)
    assert "tokenizing" not in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == entries  # one entry per corpus+tokenizer


def test_interrupted_compare_prints_only_its_own_hint(corpus, tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen(
        [sys.executable, "-m", "minigpt", "compare", "--pos", "learned", "--n-layer", "1",
         "--d-model", "16", "--n-head", "2", "--block-size", "16", "--eval-iters", "1",
         "--data", str(corpus), "--max-steps", "100000", "--eval-interval", "100000",
         "--log-interval", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "runs" / "learned-s1337" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stdout
    assert "--resume" not in stdout + stderr


@pytest.mark.parametrize("pos", list(REGISTRY))
def test_resume_is_bitwise_exact(corpus, tmp_path, pos):
    """2N steps in one go == N steps, stop, resume for N more (accumulation and dropout on)."""
    cfg = tiny_config(corpus, model={"pos": pos, "dropout": 0.1},
                      train={"max_steps": 6, "grad_accum": 2, "eval_interval": 2})
    train(cfg, tmp_path / "full", progress=False)
    cfg2 = tiny_config(corpus, model={"pos": pos, "dropout": 0.1},
                       train={"max_steps": 6, "grad_accum": 2, "eval_interval": 2})
    half = train(cfg2, tmp_path / "half", until=3, progress=False)
    assert half.step == 3
    resumed = train(cfg2, tmp_path / "half", resume=True, progress=False)
    assert resumed.step == 6
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "half" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def losses(d):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]

    assert losses(tmp_path / "full") == losses(tmp_path / "half")


def test_sigint_saves_and_the_same_command_with_resume_finishes(corpus, tmp_path):
    out = tmp_path / "run"
    r = interrupt_training(out, signal.SIGINT, "--preset", "tiny", "--data", corpus, "--quiet",
                           "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    assert "saving checkpoint, Ctrl-C again to abandon this save" in r.stderr
    hint = re.search(r"to continue, run the same command with --resume: (minigpt .*)", r.stdout)
    assert hint, r.stdout
    state = json.loads((out / "config.json").read_text())
    assert 0 < state["step"] < 100000
    # the printed command, as given (preset, data and all), with only --max-steps changed
    again = shlex.split(hint.group(1))[1:] + ["--max-steps", str(state["step"] + 3)]
    assert again[0] == "train" and "--resume" in again and "--preset" in again
    r = run_cli(*again)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} from its checkpoint at step {state['step']}\n" in r.stdout
    assert "tokenizing" not in r.stdout  # the token cache already holds this corpus
    assert f"step {state['step'] + 3}:" in r.stdout


def test_init_from_starts_from_the_checkpoint(corpus, tmp_path):
    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    r = run_cli("train", "--preset", "tiny", "--data", corpus, "--init-from", src, "--out",
                tmp_path / "ft", "--max-steps", "1", "--lr", "1e-9", "--min-lr", "0",
                "--warmup-steps", "0", "--quiet", "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    a = load_file(src / "model.safetensors")
    b = load_file(tmp_path / "ft" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_what_a_setting_left_off_the_command_line_means_is_the_librarys(corpus, tmp_path):
    """training.flags_base (what `minigpt train` builds its flags on): a resume starts from the
    saved config, a new or unsaved run from nothing, --init-from from the checkpoint's model."""
    from minigpt.training import flags_base

    src = tmp_path / "src"
    cfg = tiny_config(corpus, {"pos": "rope"})
    train(cfg, src, progress=False)
    saved, init_model = flags_base(src, resume=True, init_from=None)
    assert saved == read_config(src)[0] and saved.model.pos == "rope" and init_model is None
    assert flags_base(tmp_path / "none", resume=True, init_from=None) == (None, None)
    assert flags_base(src, resume=False, init_from=None) == (None, None)
    assert flags_base(tmp_path / "new", resume=False, init_from=src) == (None, saved.model)


def test_init_from_rule_is_the_librarys(corpus, tmp_path):
    """train(init_from=...) from Python gets the CLI's rule: model settings other than dropout
    must be the checkpoint's (named, old -> new), checked before any file is written; a
    checkpoint whose tensors no longer match its config is a CheckpointError, not torch's
    RuntimeError; dropout may change and the weights are the checkpoint's."""
    src = tmp_path / "src"
    train(tiny_config(corpus), src, progress=False)
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"init_from takes .*\(n_layer 2 -> 3; d_model 16 "
                                          r"-> 32; d_ff 64 -> 128\); only dropout may change"):
        train(tiny_config(corpus, {"n_layer": 3, "d_model": 32}), bad, init_from=src,
              progress=False)
    assert not bad.exists()
    cfg = tiny_config(corpus, {"dropout": 0.3}, {"max_steps": 1, "lr": 1e-9, "min_lr": 0.0,
                                                 "warmup_steps": 0})
    ft = tmp_path / "ft"
    train(cfg, ft, init_from=src, progress=False)
    saved, _ = read_config(ft)
    assert saved.model.dropout == 0.3 and saved.model.n_layer == 2
    a, b = load_file(src / "model.safetensors"), load_file(ft / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    raw = json.loads((edited / "config.json").read_text())
    raw["model"]["d_model"] = 32
    (edited / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="shape"):
        train(tiny_config(corpus, {"d_model": 32, "d_ff": 64}), tmp_path / "ft2", init_from=edited,
              progress=False)


def _lrs(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_resume_with_more_steps_keeps_the_schedule_and_says_so(corpus, tmp_path):
    """A larger max_steps on resume trains on at min_lr after the run's own cosine (it does
    not stretch the cosine, which would raise the rate again), interrupted or finished."""
    cfg = tiny_config(corpus, train={"warmup_steps": 2})
    ref = train(cfg, tmp_path / "ref", progress=False)  # the 6-step run, uninterrupted
    ref_lr = _lrs(ref.out)
    min_lr = cfg.train.min_lr
    assert ref_lr[4] > 2 * min_lr  # still decaying near the end
    for until in (3, None):  # interrupted at step 3, or finished at step 6
        out = tmp_path / f"run{until}"
        train(cfg, out, until=until, progress=False)
        said: list[str] = []
        res = train(tiny_config(corpus, train={"warmup_steps": 2, "max_steps": 10}), out,
                    resume=True, progress=False, log=said.append)
        assert res.step == 10
        lr = _lrs(out)
        assert [lr[s] for s in range(1, 7)] == pytest.approx([ref_lr[s] for s in range(1, 7)])
        assert [lr[s] for s in range(7, 11)] == pytest.approx([min_lr] * 4)
        note = [m for m in said if m.startswith("max steps 6 -> 10")]
        assert len(note) == 1 and "not one 10-step run" in note[0], said
        saved = json.loads((out / "config.json").read_text())["train"]
        assert saved["max_steps"] == 10 and saved["lr_decay_steps"] == 6


def test_resuming_a_finished_run_says_it_is_finished(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = ["train", "--preset", "tiny", "--data", corpus, "--out", out, "--quiet",
           "--max-steps", "4", "--eval-interval", "2", "--sample-tokens", "5"]
    r = run_cli(*cmd)
    assert r.returncode == 0 and "--- sample" in r.stdout, r.stderr
    before = (out / "metrics.jsonl").read_bytes(), (out / "model.safetensors").read_bytes()
    r = run_cli(*cmd, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"{out} is at step 4 and nothing was trained: it is already finished" in r.stdout
    assert "tokens/s" not in r.stdout and "--- sample" not in r.stdout
    assert ((out / "metrics.jsonl").read_bytes(), (out / "model.safetensors").read_bytes()) \
        == before
