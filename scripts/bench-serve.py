#!/usr/bin/env python3
"""Benchmark `minigpt serve` against `minigpt sample` on one checkpoint; prints the figures.

    .venv/bin/python scripts/bench-serve.py --ckpt runs/small [--rounds 7] [--tokens 200]

Measures, with the server and `minigpt sample` as real processes in the same environment:
  - time to first token: request sent -> first token event received (median, p10-p90, max)
  - streaming rate: tokens/s from the first generated token to the last, for the server's
    event stream and for `minigpt sample`'s stdout, timed alternately (interleaved rounds)
  - 8 concurrent generations: all complete and give the text each gives alone (greedy),
    wall time, and every request's time to first token
  - memory: the server's RSS after a warm-up and after 200 more requests
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

PROMPT = "ROMEO:\n"


def start_server(ckpt: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "serve", "--ckpt", ckpt,
                             "--port", "0", "--max-new-tokens", "5000"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+/)", line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, m.group(1)


def stream(url: str, **body: object) -> list[tuple[float, dict]]:
    """(arrival time, event) of one generation; the first entry's time is the request's start."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "api/generate", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    out: list[tuple[float, dict]] = [(t0, {"type": "sent"})]
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: "):
                out.append((time.perf_counter(), json.loads(line[6:])))
    return out


def token_times(events: list[tuple[float, dict]]) -> list[float]:
    return [t for t, e in events if e["type"] == "token"]


def server_rate(url: str, model: str, n: int, seed: int) -> float:
    """tokens/s of the event stream from its first token to its last, read as raw bytes the
    way sample_rate reads `minigpt sample`'s stdout (no parsing on the clock)."""
    body = dict(model=model, prompt=PROMPT, max_new_tokens=n, temperature=0.8, seed=seed)
    req = urllib.request.Request(url + "api/generate", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    seen, first, last = 0, None, None
    with urllib.request.urlopen(req, timeout=600) as r:
        while chunk := r.read1(65536):
            now = time.perf_counter()
            k = chunk.count(b'"type": "token"')  # whole events: each write is one HTTP chunk
            if k and first is None:
                first = now
            seen += k
            if k:
                last = now
    assert seen == n, (seen, n)
    return (n - 1) / (last - first)


def sample_rate(ckpt: str, n: int, seed: int) -> float:
    """tokens/s of `minigpt sample` from its first generated character to its last."""
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "sample", "--ckpt", ckpt,
                             "--prompt", PROMPT, "--max-new-tokens", str(n),
                             "--temperature", "0.8", "--seed", str(seed)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    got, first, last = b"", None, None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        now = time.perf_counter()
        got += chunk
        if first is None and len(got) > len(PROMPT):
            first = now
        last = now
    proc.wait()
    text = got.decode()[len(PROMPT):].removesuffix("\n")
    # a char tokenizer writes (at most) one character per token (the small preset's)
    assert proc.returncode == 0 and 0 < len(text) <= n, (proc.returncode, len(text), n)
    return (n - 1) / (last - first)


def rss_kib(pid: int) -> tuple[int, int]:
    s = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+) kB", s).group(1))  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def spread(xs: list[float], unit: str, fmt: str = ".1f") -> str:
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return (f"median {statistics.median(xs):{fmt}} {unit} (p10 {q[0]:{fmt}}, p90 {q[-1]:{fmt}}, "
            f"min {min(xs):{fmt}}, max {max(xs):{fmt}}, n={len(xs)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    proc, url = start_server(args.ckpt)
    try:
        model = json.loads(urllib.request.urlopen(url + "api/models").read())["models"][0]
        name = model["name"]
        print(f"server {url}: {name} ({model['pos']}, {model['n_layer']} layers, d_model "
              f"{model['d_model']}, {model['params']:,} parameters, {model['tokenizer']})")
        for i in range(3):  # warm-up
            stream(url, model=name, prompt=PROMPT, max_new_tokens=20, seed=i)

        ttft = []
        for i in range(30):
            ev = stream(url, model=name, prompt=PROMPT, max_new_tokens=1, seed=i)
            ttft.append((token_times(ev)[0] - ev[0][0]) * 1000)
        print(f"time to first token: {spread(ttft, 'ms')}")

        srv, cli = [], []
        for r in range(args.rounds):  # interleaved, so background load hits both alike
            cli.append(sample_rate(args.ckpt, args.tokens, r))
            srv.append(server_rate(url, name, args.tokens, r))
        ratios = [s / c for s, c in zip(srv, cli)]
        print(f"streaming, {args.tokens} tokens, temperature 0.8:")
        print(f"  minigpt sample: {spread(cli, 'tokens/s')}")
        print(f"  minigpt serve:  {spread(srv, 'tokens/s')}")
        print(f"  serve / sample per round: {spread(ratios, '', '.3f')}")
        print("  rounds (sample, serve): " + ", ".join(f"({c:.0f}, {s:.0f})"
                                                     for c, s in zip(cli, srv)))

        n = 100
        jobs = [dict(model=name, prompt=PROMPT[: 2 + i % 6] + "a" * i, max_new_tokens=n,
                     temperature=0) for i in range(8)]
        alone = [stream(url, **j) for j in jobs]
        alone_texts = ["".join(e["text"] for _, e in a if e["type"] == "token") for a in alone]
        results: list = [None] * 8

        def go(i: int) -> None:
            results[i] = stream(url, **jobs[i])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        texts = ["".join(e["text"] for _, e in r if e["type"] == "token") for r in results]
        ok = sum(r[-1][1]["type"] == "done" for r in results)
        firsts = [(token_times(r)[0] - r[0][0]) * 1000 for r in results]
        single = statistics.median((n - 1) / (token_times(a)[-1] - token_times(a)[0])
                                   for a in alone)
        print(f"8 concurrent generations x {n} tokens (greedy): {ok}/8 done, "
              f"{sum(a == b for a, b in zip(texts, alone_texts))}/8 equal to their text alone; "
              f"wall {wall:.2f} s = {8 * n / wall:.0f} tokens/s in all "
              f"(one alone: {single:.0f} tokens/s); first token {spread(firsts, 'ms')}")

        for i in range(20):
            stream(url, model=name, prompt=PROMPT, max_new_tokens=20, seed=i)
        before = rss_kib(proc.pid)
        for i in range(args.requests):
            stream(url, model=name, prompt=PROMPT, max_new_tokens=20, temperature=0.8, seed=i)
        after = rss_kib(proc.pid)
        print(f"memory over {args.requests} requests of 20 tokens: RSS {before[0] / 1024:.1f} "
              f"-> {after[0] / 1024:.1f} MiB ({(after[0] - before[0]) / 1024:+.1f} MiB), peak "
              f"{after[1] / 1024:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
