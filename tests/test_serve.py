"""`minigpt serve`: the real server process, driven over HTTP and from headless Chromium.

Two tiny checkpoints (rope and learned) are trained once; one server process serves them for
the whole module. The browser tests use Playwright with the system Chromium that
scripts/ensure-chromium.sh installs; they skip only when no Chromium exists.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import SMALL_TEXT, chromium, run_cli, tiny_config

PROMPT = "FIRST CITIZEN:\n"
CAP = 5000  # the test server's --max-new-tokens, high enough to stop a generation midway


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from minigpt.training import train

    root = tmp_path_factory.mktemp("serve")
    corpus = root / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    out = {}
    for pos in ("rope", "learned"):
        d = root / pos
        train(tiny_config(corpus, {"pos": pos}, {"max_steps": 20, "eval_interval": 10}),
              out=d, progress=False)
        out[pos] = d
        # a copy laid out as a `minigpt compare` output, for --study
        shutil.copytree(d, root / "study" / "runs" / f"{pos}-s0")
    return SimpleNamespace(root=root, study=root / "study", **out)


class Server:
    """A `minigpt serve` process on a free port; reads its address from its first line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minigpt", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # one torch thread: on a 2-core machine shared with other jobs, two threads that
            # wait for each other make a tiny model's tokens 50x slower (measured)
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        line = self.proc.stdout.readline()
        m = re.search(r"(http://\S+/)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no address from minigpt serve: {line!r} "
                                 f"{self.proc.stderr.read()[-2000:]}")
        self.url = m.group(1)
        self.banner = line

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}

    def post(self, path: str, body: object, raw: bytes | None = None) -> tuple[int, bytes]:
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def generate(self, **body: object) -> list[dict]:
        """POST /api/generate and parse its server-sent events (with arrival times)."""
        req = urllib.request.Request(self.url + "api/generate", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        events = []
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            for line in r:
                if line.startswith(b"data: "):
                    ev = json.loads(line[6:])
                    ev["_t"] = time.perf_counter()
                    events.append(ev)
        return events

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(ckpts: SimpleNamespace):
    s = Server("--ckpt", str(ckpts.rope), "--ckpt", str(ckpts.learned),
               "--max-new-tokens", str(CAP), "--max-prompt-chars", "300")
    yield s
    s.close()


def text_of(events: list[dict]) -> str:
    start = events[0]
    assert start["type"] == "start", events[:2]
    assert events[-1]["type"] == "done", events[-3:]
    return start["prompt_text"] + "".join(e["text"] for e in events if e["type"] == "token")


_CLI: dict[tuple, str] = {}
_MODELS: dict[Path, tuple] = {}


def sample_cli(ckpt: Path, prompt: str, n: int, temperature: float, seed: int = 0) -> str:
    """What `minigpt sample` prints (run once per setting: each run imports torch anew)."""
    key = (ckpt, prompt, n, temperature, seed)
    if key not in _CLI:
        r = run_cli("sample", "--ckpt", ckpt, "--prompt", prompt, "--max-new-tokens", n,
                    "--temperature", temperature, "--seed", seed)
        assert r.returncode == 0, r.stderr
        _CLI[key] = r.stdout.removesuffix("\n")
    return _CLI[key]


def sample_lib(ckpt: Path, prompt: str, n: int, temperature: float, seed: int = 0) -> str:
    """The same through the library call `minigpt sample` makes (sample_text), in-process."""
    from minigpt.checkpoint import load
    from minigpt.generation import sample_text

    if ckpt not in _MODELS:
        _MODELS[ckpt] = load(ckpt)[:2]
    model, tok = _MODELS[ckpt]
    return sample_text(model, tok, prompt, max_new_tokens=n, temperature=temperature,
                       seed=seed)[0]


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


# --- HTTP: the same tokens as `minigpt sample`, probabilities, limits -------------------------

def test_stream_matches_minigpt_sample_and_carries_probabilities(server: Server,
                                                                 ckpts: SimpleNamespace) -> None:
    for name, temperature, seed in (("rope", 0, 0), ("learned", 0, 0), ("rope", 1.0, 7)):
        events = server.generate(model=name, prompt=PROMPT, max_new_tokens=40,
                                 temperature=temperature, seed=seed)
        ref = sample_cli if (name, temperature) == ("rope", 0) else sample_lib
        assert text_of(events) == ref(getattr(ckpts, name), PROMPT, 40, temperature, seed)
        tokens = [e for e in events if e["type"] == "token"]
        assert len(tokens) == 40 and events[-1]["tokens"] == 40
        for e in tokens:
            ps = [p for _, _, p in e["top"]]
            assert len(ps) == 5 and ps == sorted(ps, reverse=True) and sum(ps) <= 1.0001
            assert 0 < e["p"] <= 1
            if temperature == 0:  # greedy picks the most likely token: the first alternative
                assert e["top"][0][0] == e["id"] and e["top"][0][2] == e["p"]
            elif e["id"] in [i for i, _, _ in e["top"]]:
                assert dict((i, p) for i, _, p in e["top"])[e["id"]] == e["p"]
        assert events[0]["note"] == ""
    # a prompt longer than a learned model's L: it sees the last L tokens, and is told so
    events = server.generate(model="learned", prompt=PROMPT * 2, max_new_tokens=10, temperature=0)
    assert events[0]["note"] == ("the prompt has 30 tokens; this learned model sees only its "
                                 "last 16 (block_size).")
    assert text_of(events) == sample_lib(ckpts.learned, PROMPT * 2, 10, 0)


def test_bad_requests_get_one_sentence_and_the_server_keeps_serving(server: Server) -> None:
    cases = [
        ({"model": "nope", "prompt": "a"}, 404, "unknown model 'nope'"),
        ({"model": "rope", "prompt": "a" * 301}, 400, "at most 300 (--max-prompt-chars)"),
        ({"model": "rope", "max_new_tokens": CAP + 1}, 400, f"at most {CAP} (--max-new-tokens)"),
        ({"model": "rope", "temperature": -1}, 400, "temperature must be 0 (greedy) or positive"),
        ({"model": "rope", "top_p": 5}, 400, "top_p must be in (0, 1]"),
        ({"model": "rope", "top_k": "ten"}, 400, "top_k must be a whole number, got 'ten'"),
        ({"model": "rope", "seed": 1.5}, 400, "seed must be a whole number, got 1.5"),
        ({"model": "rope", "seed": -1}, 400, "seed must be between 0 and"),
        ({"model": "rope", "dtype": "float32"}, 400, "unknown field(s) dtype"),
        ({"model": "rope", "prompt": "日本"}, 400, "char tokenizer does not know"),
        ({"model": "rope", "colour": "red"}, 400, "unknown field(s) colour"),
        ([1, 2], 400, "must be a JSON object"),
    ]
    for body, status, words in cases:
        code, raw = server.post("/api/generate", body)
        assert code == status, (body, code, raw)
        msg = json.loads(raw)["error"]
        assert words in msg, (body, msg)
        assert "\n" not in msg and "Traceback" not in msg
    code, raw = server.post("/api/generate", None, raw=b"{not json")
    assert code == 400 and "not valid JSON" in json.loads(raw)["error"]
    code, raw = server.post("/api/generate", None, raw=b"x" * 300_000)
    assert code == 400 and "larger than 256 KiB" in json.loads(raw)["error"]
    code, raw = server.post("/api/attention", {"model": "rope", "ids": [0, 10**6]})
    assert code == 400 and "ids must be a non-empty list" in json.loads(raw)["error"]
    # no paths from the browser: only pictures viz drew are served
    code, body = server.get("/api/viz/rope/..%2Fconfig.json")
    assert code == 404
    status, models = server.get("/api/models")
    assert status == 200 and [m["name"] for m in models["models"]] == ["rope", "learned"]
    from minigpt.config import SamplingSettings
    from minigpt.positional import REGISTRY

    assert [m["description"] for m in models["models"]] == [REGISTRY["rope"].description,
                                                            REGISTRY["learned"].description]
    d = SamplingSettings()  # the page's knobs start at the one declaration's defaults
    assert models["defaults"] == {"temperature": d.temperature, "top_k": d.top_k,
                                  "top_p": d.top_p, "seed": d.seed,
                                  "max_new_tokens": min(d.max_new_tokens, CAP)}
    assert text_of(server.generate(model="rope", prompt=PROMPT, max_new_tokens=3))


def test_eight_concurrent_generations_interleave_and_match(server: Server) -> None:
    # greedy, so each request must give exactly what it gives alone
    jobs = [dict(model=("rope", "learned")[i % 2], prompt=PROMPT[: 3 + i], max_new_tokens=40,
                 temperature=0) for i in range(8)]
    alone = [text_of(server.generate(**j)) for j in jobs]
    results: list[list[dict] | BaseException] = [[] for _ in jobs]

    def go(i: int) -> None:
        try:
            results[i] = server.generate(**jobs[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, list) for r in results), results
    assert [text_of(r) for r in results] == alone
    # round robin: every request had its first token before any request was finished
    first = [next(e["_t"] for e in r if e["type"] == "token") for r in results]
    done = [r[-1]["_t"] for r in results]
    assert max(first) < min(done)
    assert wait_for(lambda: server.get("/api/stats")[1]["active"] == 0)


def test_a_closed_connection_cancels_its_generation(server: Server) -> None:
    import http.client

    before = server.get("/api/stats")[1]
    host, port = re.match(r"http://([^:/]+):(\d+)/", server.url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/generate", json.dumps(
        {"model": "rope", "prompt": PROMPT, "max_new_tokens": CAP, "temperature": 1}),
        {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    seen = 0
    while seen < 5:  # read a few tokens, then hang up like a closed tab
        if r.readline().startswith(b"data: "):
            seen += 1
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: server.get("/api/stats")[1]["cancelled"] == before["cancelled"] + 1)
    after = server.get("/api/stats")[1]
    assert after["active"] == 0
    assert after["tokens"] - before["tokens"] < CAP  # it stopped early


def test_memory_is_flat_across_200_requests(server: Server) -> None:
    def burst(n: int) -> None:
        for i in range(n):
            ev = server.generate(model=("rope", "learned")[i % 2], prompt=PROMPT,
                                 max_new_tokens=4, temperature=0.8, seed=i)
            assert ev[-1]["type"] == "done"

    def idle() -> dict:
        assert wait_for(lambda: server.get("/api/stats")[1]["active"] == 0)
        return server.get("/api/stats")[1]

    burst(30)  # warm-up: allocator pools, first-use caches
    before_stats, before = idle(), server.rss_kib()
    burst(200)
    stats, after = idle(), server.rss_kib()
    assert stats["finished"] - before_stats["finished"] == 200 and stats["active"] == 0
    assert after - before < 16 * 1024, f"RSS grew by {(after - before) / 1024:.1f} MiB"


def test_study_dir_busy_cap_and_ctrl_c(ckpts: SimpleNamespace) -> None:
    s = Server("--study", str(ckpts.study), "--max-jobs", "1", "--max-new-tokens", str(CAP))
    try:
        assert "rope-s0 (rope)" in s.banner and "learned-s0 (learned)" in s.banner
        models = s.get("/api/models")[1]["models"]
        assert [(m["name"], m["pos"], m["step"]) for m in models] == [
            ("learned-s0", "learned", 20), ("rope-s0", "rope", 20)]
        assert all(isinstance(m["val_loss"], float) for m in models)
        # one generation at a time: a second one is refused with a clear message
        import http.client

        host, port = re.match(r"http://([^:/]+):(\d+)/", s.url).groups()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/api/generate", json.dumps(
            {"model": "rope-s0", "prompt": PROMPT, "max_new_tokens": CAP}),
            {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.readline()
        code, raw = s.post("/api/generate", {"model": "learned-s0", "max_new_tokens": 1})
        assert code == 503 and "busy" in json.loads(raw)["error"]
        # Ctrl-C mid-stream: the stream ends with a sentence, the process exits cleanly
        s.proc.send_signal(signal.SIGINT)
        rest = [json.loads(line[6:]) for line in r.read().splitlines()
                if line.startswith(b"data: ")]
        conn.close()
        assert rest[-1] == {"type": "error", "message": "the server is shutting down."}
        assert s.proc.wait(timeout=30) == 130
        err = s.proc.stderr.read()
        assert err.strip() == "minigpt serve: interrupted.", err
    finally:
        s.close()


def test_cli_refuses_bad_setups_with_one_line(ckpts: SimpleNamespace, tmp_path: Path) -> None:
    import socket

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    busy_port = held.getsockname()[1]
    cases = [
        (["--ckpt", str(tmp_path / "missing")], "does not exist"),
        (["--study", str(tmp_path)], "holds no runs"),
        (["--ckpt", str(ckpts.rope), "--port", str(busy_port)], "is in use"),
        (["--ckpt", str(ckpts.rope), "--max-new-tokens", "0"], "--max-new-tokens must be"),
        (["--ckpt", str(ckpts.rope), "--host", "no-such-host.invalid"], "not an address"),
    ]
    try:
        for args, words in cases:
            r = run_cli("serve", *args, timeout=60)
            assert r.returncode == 2, (args, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0], (args, r.stderr)
    finally:
        held.close()


# --- the page in a real browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def page(server: Server):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not found; run `bash scripts/ensure-chromium.sh` (as root) or "
                    "install Chromium to test the playground in a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-dev-shm-usage"])
        pg = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
        pg.goto(server.url)
        pg.wait_for_selector("#models input")
        pg.errors = errors
        yield pg
        browser.close()


def generate_in_page(page, prompt: str, temperature: float, n: int, seed: int = 0,
                     models: tuple[str, ...] = ("rope", "learned")) -> None:
    page.click("#tab-btn-generate")  # the page is shared: a test before may have left a tab open
    for box in page.query_selector_all("#models input"):
        box.set_checked(box.get_attribute("value") in models)
    page.fill("#prompt", prompt)
    page.fill("#temperature", str(temperature))
    page.fill("#max_new_tokens", str(n))
    page.fill("#seed", str(seed))
    page.click("#generate")
    for m in models:
        page.wait_for_selector(f".column[data-model={m}] .status:has-text('done')",
                               timeout=60_000)


def column_text(page, model: str) -> str:
    return page.inner_text(f".column[data-model={model}] .out")


def test_page_generates_side_by_side_like_minigpt_sample(page, ckpts: SimpleNamespace) -> None:
    generate_in_page(page, PROMPT, 0, 40)
    for name in ("rope", "learned"):
        labels = page.inner_text(f".column[data-model={name}] .meta")
        assert name in labels and "step 20" in labels and "val loss" in labels
        assert page.locator(f".column[data-model={name}] .tok").count() == 40
    # greedy equals `minigpt sample --temperature 0`, the CLI itself for rope
    assert column_text(page, "rope") == sample_cli(ckpts.rope, PROMPT, 40, 0)
    assert column_text(page, "learned") == sample_lib(ckpts.learned, PROMPT, 40, 0)
    # the temperature takes effect: sampled text differs from greedy, and matches sampling
    generate_in_page(page, PROMPT, 1.2, 40, seed=3, models=("rope",))
    hot = column_text(page, "rope")
    assert hot == sample_lib(ckpts.rope, PROMPT, 40, 1.2, seed=3)
    assert hot != sample_lib(ckpts.rope, PROMPT, 40, 0)
    assert page.errors == []


def test_hover_shows_five_alternatives(page) -> None:
    generate_in_page(page, PROMPT, 1.0, 40, seed=1)
    tok = page.locator(".column[data-model=rope] .tok").filter(has_text=re.compile(r"\S")).first
    tok.hover()
    page.wait_for_selector("#tip:not([hidden])")
    rows = page.locator("#tip tr")
    assert rows.count() == 5
    probs = [float(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(5)]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.001
    head = page.inner_text("#tip div")  # “x” p = 0.123
    assert head.startswith(f"“{tok.inner_text()}” p = ")
    p = float(head.rsplit("= ", 1)[1])
    chosen = [i for i in range(5) if rows.nth(i).get_attribute("class") == "chosen"]
    if chosen:  # the sampled token, when among the five, is shown bold with its probability
        assert probs[chosen[0]] == p
    else:
        assert p <= probs[-1]
    # the shading follows the probability: hue 0 (red, unlikely) to 120 (green, sure)
    rgb = re.search(r"rgb\((\d+), (\d+), (\d+)\)", tok.evaluate("e => e.style.background"))
    hue = colorsys.rgb_to_hls(*(int(c) / 255 for c in rgb.groups()))[0] * 360
    assert abs(hue - 120 * p) < 2.5, (hue, p)
    if os.environ.get("MINIGPT_SCREENSHOT"):  # how docs/serve.png is made
        page.screenshot(path=os.environ["MINIGPT_SCREENSHOT"])


def test_attention_grid_and_token_view(page) -> None:
    generate_in_page(page, PROMPT, 0, 30)  # 15 prompt + 30 tokens: past rope's L = 16
    page.locator(".column[data-model=rope] .tok").nth(20).click()  # opens the token view
    page.wait_for_selector("#attn-grid canvas")
    assert page.locator("#attn-grid canvas").count() == 2 * 2  # layers x heads
    assert page.locator("#attn-tokens .chip").count() == 45
    assert page.locator("#attn-tokens .mark").inner_text() == "| L=16"
    assert page.locator("#attn-tokens .chip.past").count() == 45 - 16
    assert page.locator("#attn-tokens .chip.selected").get_attribute("data-q") == str(15 + 20)
    rows = page.locator("#attn-heads .headrow")
    assert rows.count() == 2
    for h in range(2):
        spans = rows.nth(h).locator("span[title]")
        assert spans.count() == 15 + 20 + 1  # the token and every one before it
        weights = [float(t.rsplit(": ", 1)[1]) for t in spans.evaluate_all(
            "es => es.map(e => e.title)")]
        assert abs(sum(weights) - 1) < 0.05  # a softmax row (uint8-rounded)
    # learned sees at most its L = 16 tokens: the view says it shows the last 16
    page.select_option("#attn-model", "learned")
    page.click("#attn-show")
    page.wait_for_function("document.getElementById('attn-note').textContent"
                           ".startsWith('learned')")
    assert "the last 16" in page.inner_text("#attn-note")
    assert page.locator("#attn-tokens .chip").count() == 16
    assert page.locator("#attn-tokens .mark").count() == 0
    assert page.errors == []


def test_encoding_tab_and_errors_in_page(page) -> None:
    page.click("#tab-btn-encoding")
    page.wait_for_function("document.querySelectorAll('#viz img').length == 4 && "
                           "[...document.querySelectorAll('#viz img')].every("
                           "i => i.complete && i.naturalWidth > 0)", timeout=60_000)
    names = page.locator("#viz figcaption").all_inner_texts()
    assert names == ["rope_distance.png", "rope_frequencies.png", "learned_table.png",
                     "learned_similarity.png"]
    page.click("#tab-btn-generate")
    page.fill("#top_p", "5")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "top_p must be in (0, 1], got 5.0."
    page.fill("#top_p", "")
    generate_in_page(page, PROMPT, 0, 5)  # the server still serves
    assert page.is_hidden("#error")
    assert page.errors == []


def shot(page, selector: str, tmp_path: Path, name: str):
    """A screenshot of one element, as an (H, W, 3) int array of RGB pixels."""
    from PIL import Image

    path = tmp_path / f"{name}.png"
    page.locator(selector).first.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def near(rgb, want, tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, want))


BLUE = (31, 111, 235)  # the page's trained-length colour, #1f6feb


def test_trained_length_mark_is_a_labelled_explained_marker(page, tmp_path: Path) -> None:
    generate_in_page(page, PROMPT, 0, 12)  # 15 prompt tokens: token 1 is the first past L = 16
    for name in ("rope", "learned"):
        col = f".column[data-model={name}]"
        mark = page.locator(f"{col} .tok.boundary")
        assert mark.count() == 1 and mark.get_attribute("data-i") == "1"
        label = mark.evaluate("e => getComputedStyle(e, '::before').content")
        assert label.strip('"').startswith("L=16"), label
        note = page.inner_text(f"{col} .meta .lnote")
        assert note.startswith("L=16: the trained length. Text after the blue mark is past it")
        assert ("sees only the last 16 tokens" in note) == (name == "learned")
        img = shot(page, f"{col} .tok.boundary", tmp_path, f"mark-{name}")
        blue = int((np.abs(img - np.array(BLUE)).max(axis=-1) <= 40).sum())
        assert blue >= 60, blue  # a filled label, not a 1-pixel tick
    assert "first token past the length L" in page.inner_text("#tab-generate .hint")
    assert column_text(page, "rope").startswith(PROMPT)  # the label is not part of the text
    assert page.errors == []


def test_attention_maps_name_their_axes_and_show_a_colour_scale(page, tmp_path: Path) -> None:
    generate_in_page(page, PROMPT, 0, 10, models=("rope",))
    page.locator(".column[data-model=rope] .tok").nth(3).click()
    page.wait_for_selector("#attn-grid canvas")
    assert page.is_visible("#attn-scale")
    bar = shot(page, "#attn-scale-bar", tmp_path, "scale")
    h, w, _ = bar.shape
    left, right = bar[h // 2, 3], bar[h // 2, w - 4]
    assert near(left, (255, 255, 255), 25) and near(right, (25, 5, 135), 25), (left, right)
    ticks = page.locator("#attn-scale .tick").all_inner_texts()
    assert ticks == ["0", "¼ max", "max"]
    assert "square-root" in page.inner_text("#attn-scale .hint")
    figures = page.locator("#attn-grid figure")
    assert figures.count() == 4
    for i in range(4):
        fig = figures.nth(i)
        canvas = fig.locator("canvas").bounding_box()
        ylab, xlab = fig.locator(".ylab"), fig.locator(".xlab")
        assert ylab.inner_text() == "query (row)" and xlab.inner_text() == "key (column)"
        yb, xb = ylab.bounding_box(), xlab.bounding_box()
        assert yb["x"] + yb["width"] <= canvas["x"] + 1  # left of the map
        assert yb["height"] > yb["width"]  # written upright, along the rows
        assert xb["y"] >= canvas["y"] + canvas["height"] - 1  # below the map
    img = shot(page, "#attn-grid figure", tmp_path, "map")
    dark = int((img.sum(axis=-1) < 200).sum())
    assert dark > 20  # the labels' text is drawn
    assert page.errors == []


def test_one_bad_prompt_shows_one_error(page) -> None:
    page.click("#tab-btn-generate")
    for box in page.query_selector_all("#models input"):
        box.set_checked(True)
    page.fill("#prompt", "日本")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_function("[...document.querySelectorAll('.column .status')].every("
                           "s => s.textContent.startsWith('not started'))")
    shown = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.children.length === 0 && e.offsetParent !== null
                && e.textContent.includes('does not know'))
        .map(e => e.textContent)""")
    assert len(shown) == 1 and shown[0].startswith("the char tokenizer does not know"), shown
    assert page.locator(".column .status").all_inner_texts() == [
        "not started: see the message above"] * 2
    page.fill("#prompt", "")
    assert page.errors == []


def test_encoding_tab_is_a_grid_in_plain_words(page, tmp_path: Path) -> None:
    page.click("#tab-btn-encoding")
    page.wait_for_function("document.querySelectorAll('#viz img').length == 4 && "
                           "[...document.querySelectorAll('#viz img')].every("
                           "i => i.complete && i.naturalWidth > 0)", timeout=60_000)
    assert "--" not in page.inner_text("#tab-encoding")
    height = page.evaluate("document.getElementById('tab-encoding').scrollHeight")
    assert height < 1600, height  # two pictures a row, not one 5,900-pixel column
    tops = [b["y"] for b in (page.locator("#viz img").nth(i).bounding_box() for i in range(2))]
    assert abs(tops[0] - tops[1]) < 2  # one model's pictures side by side
    path = tmp_path / "encoding.png"
    page.screenshot(path=str(path), full_page=True)
    from PIL import Image

    assert Image.open(path).size[1] < 1800
    page.click("#tab-btn-generate")
    assert page.errors == []


def test_stop_button_cancels_on_the_server(page, server: Server) -> None:
    before = server.get("/api/stats")[1]
    page.click("#tab-btn-generate")  # the attention test may have run just before, on this page
    for box in page.query_selector_all("#models input"):
        box.set_checked(box.get_attribute("value") == "rope")
    page.fill("#max_new_tokens", str(CAP))
    page.fill("#temperature", "1")
    page.click("#generate")
    # tokens stream in: some are on the page while the generation is still going
    page.wait_for_function("document.querySelectorAll('.column[data-model=rope] .tok').length "
                           "> 5")
    assert page.inner_text(".column[data-model=rope] .status").endswith("tokens…")
    page.click("#stop")
    page.wait_for_selector(".column[data-model=rope] .status:has-text('stopped')")
    assert wait_for(lambda: server.get("/api/stats")[1]["cancelled"] > before["cancelled"])
    assert server.get("/api/stats")[1]["active"] == 0
    shown = page.locator(".column[data-model=rope] .tok").count()
    assert 5 < shown < CAP
    assert page.is_enabled("#generate")
