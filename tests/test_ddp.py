"""Distributed data-parallel training on CPU: gloo, 2 processes, tiny model, via torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

COMMON = ["--preset", "tiny", "--n-layer", "1", "--d-model", "16", "--n-head", "2",
          "--block-size", "16", "--max-steps", "4", "--log-interval", "1", "--eval-interval", "2",
          "--eval-iters", "1",
          "--dropout", "0", "--quiet", "--sample-tokens", "0", "--device", "cpu", "--seed", "3",
          "--dtype", "float32"]


def torchrun(nproc: int, *args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "minigpt", "train", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def weights(d):
    return load_file(d / "model.safetensors")


def test_two_processes_equal_one_process_with_twice_the_batch(corpus, tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    half = tmp_path / "half"
    r = subprocess.run([sys.executable, "-m", "minigpt", "train", *COMMON, "--data", str(corpus),
                        "--batch-size", "8", "--out", str(one)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r2 = torchrun(2, *COMMON, "--data", corpus, "--batch-size", "4", "--out", two)
    # only rank 0 reports and writes: one summary line, one checkpoint
    assert r2.stdout.count("step 4:") == 1
    assert sorted(p.name for p in two.iterdir() if p.suffix == ".safetensors") == [
        "best.safetensors", "model.safetensors", "trainer_state.safetensors"]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 4 + 2
    a, b = weights(one), weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k

    # a 2-process run stopped at step 2 and resumed under 2 processes ends at the same place
    torchrun(2, *COMMON, "--data", corpus, "--batch-size", "4", "--out", half, "--until", "2")
    torchrun(2, "--resume", "--out", half, "--quiet", "--device", "cpu")
    c = weights(half)
    for k in a:
        assert torch.equal(b[k], c[k]), k


def test_a_failing_rank_fails_the_job_and_names_itself(tmp_path):
    r = torchrun(2, "--preset", "tiny", "--data", tmp_path / "missing.txt", "--out",
                 tmp_path / "o", "--device", "cpu", "--quiet", check=False)
    assert r.returncode != 0
    assert "rank 0: data path" in r.stderr or "rank 1: data path" in r.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_gloo_is_chosen_on_cpu():
    from minigpt.runtime import setup_distributed

    d, device = setup_distributed("cpu")
    assert d.world == 1 and device.type == "cpu"


def test_compare_runs_its_training_under_ddp(corpus, tmp_path):
    """`torchrun ... -m minigpt compare`: every run trains with 2 ranks, rank 0 reports."""
    from test_study import TINY

    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "minigpt", "compare", *TINY, "--data", str(corpus), "--device", "cpu",
           "--dtype", "float32", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("report: ") == 1  # only rank 0 speaks
    assert (out / "results.json").exists() and (out / "report.html").exists()
    for run in ("learned-s1337", "alibi-s1337"):
        metrics = (out / "runs" / run / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) >= 4  # one writer: no duplicated rows
        rows = [json.loads(m) for m in metrics]
        steps = [row["step"] for row in rows if "train_loss" in row]
        assert steps == [1, 2, 3, 4]
