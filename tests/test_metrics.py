"""What a training run shows (metrics.py's console sink): plain lines with a header in a
log file, a progress bar with evaluations above it on a terminal, only the summary with
--quiet."""

from __future__ import annotations

import os
import pty
import re
import sys


from conftest import TINY_ARGS, run_cli


def test_logs_in_a_file_are_plain_lines_with_a_header(corpus, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY_ARGS, "--data", corpus, "--out", out, "--max-steps", "4",
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
    r = run_cli("train", *TINY_ARGS, "--data", corpus, "--out", tmp_path / "q", "--max-steps", "2",
                "--log-interval", "1", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "tokens per step" in r.stdout and re.search(r"^step 2: best val loss", r.stdout, re.M)


def test_logs_on_a_terminal_keep_the_bar_with_evaluations_above_it(corpus, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "minigpt", "train", *map(str, TINY_ARGS), "--data", str(corpus),
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
