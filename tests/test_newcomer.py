"""Issue 12, the newcomer's path: resume as people expect, logs that read well, help that
explains, messages that name the right thing. Processes and signals are tested through a real
`minigpt` process; the rest through the Python API."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import SMALL_TEXT, run_cli, tiny_config
from minigpt.checkpoint import STATE_FILE, never_saved
from minigpt.cli import build_parser
from minigpt.config import ModelConfig, TrainConfig, choices, merge, preset
from minigpt.errors import ConfigError, MiniGPTError
from minigpt.files import StagedFiles
from minigpt.positional import REGISTRY
from minigpt.training import train

TINY = ["--preset", "tiny", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
        "--block-size", "16", "--eval-iters", "1", "--sample-tokens", "0", "--dtype", "float32",
        "--device", "cpu"]


# --- 1. the same command with --resume added ---------------------------------------------------

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
    cmd = ["train", *TINY, "--data", corpus, "--out", out, "--quiet", "--lr", "0.003",
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


# --- 2. a second Ctrl-C while saving --------------------------------------------------------

def test_abandoned_staged_save_leaves_the_previous_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    with pytest.raises(KeyboardInterrupt), StagedFiles() as files:
        files.write(a, b"new a")
        files.write(b, b"new b")
        raise KeyboardInterrupt  # a second Ctrl-C before the commit
    assert a.read_text() == "old a" and not b.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary files left
    with StagedFiles() as files:
        files.write(a, b"new a")
        files.write(b, b"new b")
        files.commit()
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


@pytest.mark.parametrize("when", ["back-to-back", "during-save"])
def test_two_sigints_leave_a_run_that_resumes(corpus, tmp_path, when):
    """SIGINT, then SIGINT again: at once, or as soon as the run says it is saving (a model
    big enough that writing it takes a while). The run is saved whole or not at all, never
    half, and the same command with --resume continues it (from step 0 if nothing was
    saved, saying so)."""
    out = tmp_path / "run"
    cmd = ["train", *TINY, "--d-model", "256", "--n-layer", "4", "--n-head", "4",
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


# --- 3. no second tokenization on resume ------------------------------------------------------

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


# --- 4. the compare interrupt hint ----------------------------------------------------------

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


# --- 5, 6, 7: --which best, logs, header -----------------------------------------------------

def test_logs_in_a_file_are_plain_lines_with_a_header(corpus, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, "--data", corpus, "--out", out, "--max-steps", "4",
                "--eval-interval", "2", "--log-interval", "1")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr + r.stdout
    steps = re.findall(r"^step (\d+)/4: loss \d+\.\d{4}, [\d,]+ tokens/s, ETA \d+m\d\ds$",
                       r.stderr, re.M)
    assert steps == ["1", "2", "3", "4"], r.stderr
    evals = re.findall(r"^step (\d+): train loss \d+\.\d{4}, val loss \d+\.\d{4}, "
                       r"val ppl \d+\.\d\d$", r.stderr, re.M)
    assert evals == ["2", "4"], r.stderr
    from minigpt.checkpoint import load

    model, tok, _, _ = load(out)
    head = re.search(r"^vocabulary (\d+) \(char\); ([\d,]+) parameters \(([\d,]+) positional\); "
                     r"device cpu, float32; 128 tokens per step \(8 x 16 tokens x 1 "
                     r"accumulation\)$", r.stdout, re.M)
    assert head, r.stdout
    assert int(head.group(1)) == tok.vocab_size
    assert int(head.group(2).replace(",", "")) == model.num_params()
    assert int(head.group(3).replace(",", "")) == model.pos.num_params() == 16 * 16
    # --quiet keeps the header and the summary, nothing per step
    r = run_cli("train", *TINY, "--data", corpus, "--out", tmp_path / "q", "--max-steps", "2",
                "--log-interval", "1", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "tokens per step" in r.stdout and re.search(r"^step 2: best val loss", r.stdout, re.M)


def test_logs_on_a_terminal_keep_the_bar_with_evaluations_above_it(corpus, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "minigpt", "train", *map(str, TINY), "--data", str(corpus),
            "--out", str(out), "--max-steps", "4", "--eval-interval", "2"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.execv(sys.executable, argv)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\r" in text and "train:" in text  # the tqdm bar
    assert re.search(r"step 2: train loss \d+\.\d{4}, val loss", text)
    assert not re.search(r"step \d+/4: loss", text)  # no plain per-step lines on a terminal


def test_which_best_before_the_first_evaluation_says_why(corpus, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, "--data", corpus, "--out", out, "--until", "2", "--quiet",
                "--eval-interval", "100")
    assert r.returncode == 0, r.stderr
    assert "inf" not in r.stdout and "step 2: no evaluation yet" in r.stdout
    r = run_cli("sample", "--ckpt", out, "--which", "best")
    assert r.returncode == 2
    assert "has not been evaluated" in r.stderr and "--which last" in r.stderr
    assert run_cli("sample", "--ckpt", out, "--which", "last",
                   "--max-new-tokens", "3").returncode == 0


# --- 8. library noise: see test_bench.py (no transformers advice during bench --vs hf) ---------

# --- 9. help -----------------------------------------------------------------------------------

def test_help_has_real_metavars_defaults_and_choices():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sample", "compare", "viz", "bench", "export", "import"} <= set(sub)
    texts = {c: p.format_help() for c, p in sub.items()}  # what `minigpt C --help` prints
    r = run_cli("train", "--help")
    assert r.returncode == 0 and " ".join(r.stdout.split()) == " ".join(texts["train"].split())
    for c, text in texts.items():
        assert "CFG_" not in text and "default None" not in text, c
    train_h = " ".join(texts["train"].split())
    assert "--d-ff N feed-forward width (default: 4 x d_model)" in train_h
    assert "--lr FLOAT peak learning rate, reached after warm-up (default: 0.001)" in train_h
    for flag, cls, name in (("--activation", ModelConfig, "activation"),
                            ("--tokenizer", TrainConfig, "tokenizer"),
                            ("--dtype", TrainConfig, "dtype")):
        assert f"{flag} {{{','.join(choices(cls, name))}}}" in train_h  # the config's choices
    assert f"--pos NAME positional encoding: {', '.join(REGISTRY)} (default: learned)" in train_h
    assert "word tokenizer only" in train_h and "rope only" in train_h
    assert "CPUs with native bf16" in train_h
    compare_h = " ".join(texts["compare"].split())
    assert "--max-steps N optimizer steps to train for (default: 800)" in compare_h  # quick
    assert "--config" not in compare_h
    sample_h = " ".join(texts["sample"].split())
    assert "(default: 0.8)" in sample_h and "(default: 200)" in sample_h


def test_building_the_parser_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys; from minigpt.cli import build_parser; "
                        "build_parser(); print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr  # `minigpt --help` stays fast


def test_every_option_has_a_metavar_a_person_would_write():
    allowed = {"N", "FLOAT", "NAME", "PATH", "TEXT", "DEVICE", "P", "STEP", "T,T,...",
               "A,B,...", "LIST"}
    sub = build_parser()._subparsers._group_actions[0].choices
    for name, p in sub.items():
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or action.choices:
                continue  # flags without a value, and choices, which argparse lists
            assert action.metavar in allowed, (name, action.option_strings, action.metavar)


def test_help_choices_are_the_configs_choices():
    """One source: every choice the train parser offers is what the config accepts."""
    p = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in p._actions:
        if action.dest.startswith("cfg_") and action.choices:
            name = action.dest[4:]
            cls = ModelConfig if name in ModelConfig.__dataclass_fields__ else TrainConfig
            assert tuple(action.choices) == tuple(choices(cls, name))


# --- 10. one vocabulary flag -------------------------------------------------------------------

def test_one_vocab_size_flag_means_what_it_says_per_tokenizer(corpus, tmp_path):
    from minigpt.cli.options import build_config

    def cfg(*args: str):
        return build_config(build_parser().parse_args(["train", *args]))

    assert cfg("--tokenizer", "bpe", "--vocab-size", "300").train.vocab_size_bpe == 300
    assert cfg("--tokenizer", "word", "--vocab-size", "300").train.max_vocab == 300
    with pytest.raises(ConfigError, match="char tokenizer .* takes no vocabulary size"):
        cfg("--vocab-size", "300")
    r = run_cli("train", *TINY, "--tokenizer", "bpe", "--vocab-size", "100", "--data", corpus,
                "--out", tmp_path / "x")
    assert r.returncode == 2 and "--vocab-size must be between 260" in r.stderr
    assert "vocab_size_bpe" not in r.stderr
    # BPE on a tiny corpus cannot reach 5000 tokens: it says so
    r = run_cli("train", *TINY, "--tokenizer", "bpe", "--vocab-size", "5000", "--data", corpus,
                "--out", tmp_path / "b", "--max-steps", "1", "--quiet")  # a note, not progress
    assert r.returncode == 0, r.stderr
    m = re.search(r"made (\d+) tokens, fewer than the 5000 asked for", r.stdout)
    assert m and int(m.group(1)) < 5000


# --- 11. preset families -----------------------------------------------------------------------

def test_train_takes_study_presets_and_errors_list_both_families():
    quick = preset("quick")
    assert (quick.train.max_steps, quick.train.batch_size, quick.train.lr) == (800, 16, 2e-3)
    r = run_cli("train", "--preset", "huge", "--out", "/nonexistent/x")
    assert r.returncode == 2 and "model presets tiny, small" in r.stderr
    assert "study presets" in r.stderr and "quick, full" in r.stderr
    r = run_cli("compare", "--preset", "small", "--out", "/nonexistent/x")
    assert r.returncode == 2 and "compare takes a study preset, not 'small'" in r.stderr
    assert "model presets tiny, small" in r.stderr


# --- 12. init-from a char tokenizer onto new data ----------------------------------------------

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


# --- 13. unknown words ---------------------------------------------------------------------

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


# --- 14. file permissions: see test_hf.py (export) and below --------------------------------

def test_staged_directories_get_the_umask_mode(tmp_path):
    from minigpt.files import staged_dir

    umask = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "d") as tmp:
            fd = os.open(tmp / "private", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors
            os.close(fd)
        assert (tmp_path / "d" / "private").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


# --- 15. API wording vs CLI wording ------------------------------------------------------------

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


# --- 16. one-encoding study summary ----------------------------------------------------------

def test_one_encoding_summary_compares_nothing_with_itself():
    from minigpt.study import get_objective
    from minigpt.study.summary import summarize

    agg = {"pos": "learned", "extrapolates": False, "train_time_s": {"mean": 207.0},
           "step_time_ms": {"mean": 31.0, "std": 0.0, "n": 1}, "pos_params": {"mean": 8192.0},
           "length_ppl": [{"length": 64, "ppl": {"mean": 5.5, "std": None, "n": 1}}]}
    results = {"study": {"block_size": 64, "lengths": [64], "seeds": [1337],
                         "unigram_ppl": 30.0, "eval_span_tokens": 1024},
               "environment": {"jobs": 1}, "aggregates": [agg]}
    text = summarize(results, get_objective("lm"))["text"]
    assert "A steady-state training step took 31.0 ms (median)." in text
    assert "31.0-31.0" not in text and "faster" not in text and "best" not in text
    assert "At the trained length L = 64, validation perplexity: learned 5.50." in text
    from minigpt.text import plural

    assert (plural(1, "encoding"), plural(2, "encoding"), plural(1, "run")) == \
        ("1 encoding", "2 encodings", "1 run")
