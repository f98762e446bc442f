"""The positional-encoding study (minigpt.study): evaluator, window baseline, metrics,
fairness, and a tiny end-to-end study (results.json against its schema, plots, report in a
real browser, skip/resume/refusal, several runs at once)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SMALL_TEXT, chromium, run_cli
from torch import nn

import minigpt.study as S
from minigpt import evaluation, results_schema
from minigpt.errors import ConfigError, DataError, MiniGPTError
from minigpt.study.schema import build_schema

PNG = b"\x89PNG\r\n\x1a\n"
NA_LEARNED = "n/a, learned positions stop at L"


# --- length-generalization evaluator --------------------------------------------------------

def test_strided_windows_score_the_same_targets_with_the_promised_context() -> None:
    """At every length the same targets are scored, each with T - s to T - 1 earlier tokens
    of context inside its window, and x/y are the span shifted by one."""
    val = np.arange(5000) % 61
    lengths, s = [16, 32, 64, 128], 8
    span = evaluation.eval_span(val, lengths, s, tokens=200)
    longest, n = evaluation.span_geometry(span, lengths, s)
    assert longest == 128 and n == 25  # ceil(200 / 8) windows
    want = torch.from_numpy(evaluation.scored_targets(span, s, longest))
    assert len(want) == n * s
    t = torch.from_numpy(span)
    for T in lengths:
        x, y = evaluation.strided_windows(span, T, s, longest)
        assert x.shape == (n, T) == y.shape
        assert torch.equal(y[:, -s:].flatten(), want)  # the same targets, in order, at every T
        for j in range(n):
            end = longest + j * s  # index in the span of the window's last input token
            assert torch.equal(x[j], t[end - T: end]) and torch.equal(y[j], t[end - T + 1: end + 1])
            for i in range(T - s, T):  # scored position i predicts span[end - T + i + 1] ...
                context = i  # ... and has i earlier tokens of its window before it
                assert T - s <= context <= T - 1
    # a split too short for even one window of the longest length
    with pytest.raises(DataError, match="too few"):
        evaluation.eval_span(np.arange(100), [16, 128], 8, tokens=64)
    # the stride is at most L/2 and at most the shortest length
    with pytest.raises(MiniGPTError, match="stride"):
        evaluation.check_stride(9, [16, 32], 16)
    evaluation.check_stride(8, [16, 32], 16)


def test_paired_bootstrap_and_wilson() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    assert evaluation.paired_bootstrap(a, a + 0.5)["hi"] < 0  # b is clearly larger
    same = evaluation.paired_bootstrap(a, a + rng.normal(scale=0.01, size=400) * 0)
    assert same["lo"] <= 0 <= same["hi"]
    lo, hi = evaluation.wilson_interval(90, 200)
    assert lo == pytest.approx(0.3820, abs=1e-3) and hi == pytest.approx(0.5198, abs=1e-3)
    for n in (200, 1000):  # exact ends: rounding gave 0.9999999999999999 and 2e-19, and a
        # one-seed accuracy plot then drew a negative error bar (matplotlib raised)
        assert evaluation.wilson_interval(0, n)[0] == 0.0
        assert evaluation.wilson_interval(n, n)[1] == 1.0


class ConstantLM(nn.Module):
    """Logits that ignore the input: each token's loss depends only on the token itself."""

    def __init__(self, vocab: int, block_size: int, extrapolates: bool = True) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(block_size=block_size, pos="const")
        self.pos = SimpleNamespace(extrapolates=extrapolates)
        self.bias = nn.Parameter(torch.randn(vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, idx, targets=None, **_):
        return self.bias.expand(*idx.shape, -1), None


def test_length_evaluation_is_model_independent_of_window_cut() -> None:
    """With input-independent logits, every length must give exactly the same mean loss:
    the same tokens are scored at every length."""
    val = np.random.default_rng(0).integers(0, 50, size=4000)
    span = evaluation.eval_span(val, [16, 32, 64, 128], 8, tokens=512)
    res = evaluation.length_generalization(ConstantLM(50, 16), span, [16, 32, 64, 128], 8)
    losses = [r["loss"] for r in res["results"]]
    assert all(r["tokens"] == res["span_tokens"] == 512 for r in res["results"])
    assert max(losses) - min(losses) < 1e-9
    assert all(len(r["window_loss"]) == 64 for r in res["results"])
    assert res["position_loss"]["length"] == 128 and len(res["position_loss"]["loss"]) == 128


def test_learned_gets_na_past_L_never_a_number() -> None:
    from minigpt.config import merge, preset
    from minigpt.model import GPT

    val = np.random.default_rng(1).integers(0, 30, size=3000)
    span = evaluation.eval_span(val, [16, 32, 64], 8, tokens=64)
    out = {}
    for pos in ("learned", "alibi"):
        cfg = merge(preset("tiny"), {"pos": pos, "block_size": 16, "n_layer": 1, "d_model": 16,
                                     "n_head": 2, "vocab_size": 30}, {})
        out[pos] = evaluation.length_generalization(GPT(cfg.model, seed=1), span, [16, 32, 64], 8)
    learned = {r["length"]: r for r in out["learned"]["results"]}
    assert learned[16]["ppl"] is not None and learned[16]["reason"] is None
    for n in (32, 64):
        assert learned[n]["ppl"] is None and learned[n]["loss"] is None
        assert learned[n]["reason"] == NA_LEARNED
    assert out["learned"]["position_loss"]["length"] == 16  # the longest it can score
    assert all(r["ppl"] is not None and math.isfinite(r["ppl"]) for r in out["alibi"]["results"])
    assert out["alibi"]["position_loss"]["length"] == 64


# --- generation-quality metrics -------------------------------------------------------------

def test_generation_metrics_on_hand_made_text() -> None:
    assert evaluation.words("Ne'er say 'never', ROMEO! 2 cats") == \
        ["ne'er", "say", "never", "romeo", "2", "cats"]
    ab = ["a", "b", "a", "b"]
    assert evaluation.distinct_n(ab, 1) == 0.5
    assert evaluation.distinct_n(ab, 2) == pytest.approx(2 / 3)
    assert evaluation.distinct_n(["a"], 2) is None
    loop = ["a", "b", "c", "d", "a", "b", "c", "d"]  # 5 four-grams, one of them a repeat
    assert evaluation.repeated_ngram_share(loop, 4) == pytest.approx(1 / 5)
    assert evaluation.repeated_ngram_share(["a", "b", "c", "d", "e", "f"], 4) == 0.0
    assert evaluation.repeated_ngram_share(["a", "b", "c"], 4) is None
    assert evaluation.known_word_share(["to", "be", "xyzzy"], {"to", "be"}) == pytest.approx(2 / 3)
    m = evaluation.generation_metrics("To be, or not to be: to be!", {"to", "be", "or"})
    assert m["words"] == 8 and m["distinct_1"] == pytest.approx(4 / 8)
    assert m["known_word_share"] == pytest.approx(7 / 8)
    assert m["repeated_4gram_share"] == pytest.approx(0.0)
    empty = evaluation.generation_metrics("...", set())
    assert empty["words"] == 0 and empty["distinct_1"] is None and empty["known_word_share"] is None
    assert evaluation.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert evaluation.mean_std([None, None])["mean"] is None


# --- settings, fairness, schema -------------------------------------------------------------

def test_study_settings() -> None:
    assert S.parse_lengths("1x,2x,4x,8x", 64) == [64, 128, 256, 512]
    assert S.parse_lengths("100,200", 64) == [64, 100, 200]  # L is always included
    assert S.parse_lengths("0.5x,2x", 64) == [32, 64, 128]
    for bad in ("3.3x", "abc", "0", "-2x"):
        with pytest.raises(ConfigError):
            S.parse_lengths(bad, 16)
    with pytest.raises(ConfigError, match="unknown encoding"):
        S.make_study(pos="learned,fourier")
    with pytest.raises(ConfigError, match="--pos"):
        S.make_study(model={"pos": "rope"})
    with pytest.raises(ConfigError, match="--criterion"):
        S.make_study(task="copy", criterion=1.5)
    with pytest.raises(ConfigError, match="--jobs"):
        S.make_study(jobs=-1)
    with pytest.raises(ConfigError, match="longest evaluation needs 512 tokens"):
        S.make_study(pos="rope", model={"random_positions": 256})  # 8L = 512 > 256
    rp = S.make_study(task="passkey", pos="rope", model={"random_positions": 256})
    assert rp.objective.longest_tokens(rp) == 232 <= 256
    s = S.make_study("quick", pos="learned,alibi", seeds=3, train={"seed": 7})
    assert s.seeds == [7, 8, 9] and len(s.runs()) == 6
    assert s.runs()[:2] == [("learned-s7", "learned", 7), ("alibi-s7", "alibi", 7)]
    full = S.make_study("full", pos="learned,sinusoidal,rope,alibi,nope,t5")
    assert full.seeds == [1337, 1338, 1339] and max(full.lengths) == 8 * full.block_size
    assert s.fingerprint() != S.make_study("quick", pos="learned,alibi").fingerprint()
    # the flags of compare come from StudySettings: every field is a flag
    from minigpt.cli import build_parser

    ns = build_parser().parse_args(["compare", "--criterion", "0.9", "--jobs", "2"])
    assert ns.set_criterion == 0.9 and ns.set_jobs == 2
    for f in S.StudySettings.__dataclass_fields__:
        assert hasattr(ns, f"set_{f}"), f


def test_encodings_share_initial_values_and_batches(corpus: Path) -> None:
    """For a given seed every encoding starts from identical shared parameters and sees the
    same batches; run configs differ only in pos."""
    from minigpt.model import GPT
    from minigpt.training import load_dataset

    names = ["learned", "sinusoidal", "rope", "alibi", "nope", "t5"]
    from minigpt.study.fairness import verify_shared_init

    study = S.make_study("quick", pos=names, model={"block_size": 16, "n_layer": 1,
                         "d_model": 16, "n_head": 2}, train={"data": str(corpus)})
    data = load_dataset(study.base)
    check = verify_shared_init(study, data.tokenizer.vocab_size)
    assert check["shared_init_identical"] and check["configs_differ_only_in"] == ["model.pos"]
    params = {}
    for p in names:
        cfg = study.run_config(p, 1337)
        cfg.model.vocab_size = data.tokenizer.vocab_size
        params[p] = dict(GPT(cfg.model, seed=1337).named_parameters())
    shared = set.intersection(*(set(v) for v in params.values()))
    assert len(shared) == check["shared_tensors"] > 10
    for p in names:  # whatever is not shared belongs to the encoding
        assert all(n.startswith("pos.") for n in set(params[p]) - shared)
        for n in shared:
            assert torch.equal(params[p][n], params["learned"][n]), (p, n)
    batches = []
    for p in names:
        t, m = study.run_config(p, 1337).train, study.run_config(p, 1337).model
        batches.append(data.batch("train", step=5, micro=0, batch_size=t.batch_size,
                                  block_size=m.block_size, seed=t.seed, mode=t.batching))
    assert all(torch.equal(b[0], batches[0][0]) and torch.equal(b[1], batches[0][1])
               for b in batches)


def test_schema_validator_catches_mistakes() -> None:
    schema = build_schema()
    assert results_schema.validate({"schema": results_schema.SCHEMA}, schema)  # keys missing
    errs = results_schema.validate({"a": 1.5, "b": [1, "x"], "c": True},
                            {"type": "object", "required": ["a", "d"], "properties": {
                                "a": {"type": "integer"}, "b": {"type": "array",
                                                                "items": {"type": "number"}},
                                "c": {"type": "number"}}})
    assert len(errs) == 4, errs  # a not integer, d missing, b[1] not number, bool not number


# --- a tiny end-to-end study ----------------------------------------------------------------

TINY = ["--pos", "learned,alibi,t5", "--t5-max-distance", "64", "--block-size", "16",
        "--n-layer", "1", "--n-head", "2",
        "--d-model", "16", "--batch-size", "4", "--max-steps", "4", "--eval-interval", "2",
        "--eval-iters", "1", "--log-interval", "1", "--sample-tokens", "24", "--eval-tokens",
        "64", "--quiet"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One tiny study (learned + alibi, 4 steps). The learned run is first trained to step 2
    outside the study, as if a previous `compare` had been interrupted there."""
    from minigpt.training import train

    root = tmp_path_factory.mktemp("study")
    corpus = root / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    args = [*TINY, "--data", str(corpus)]
    out = root / "out"
    parsed = _parse(args)
    cfg = parsed.run_config("learned", 1337)
    res = train(cfg, out / "runs" / "learned-s1337", until=2, progress=False)
    assert res.step == 2
    S.write_study_file(parsed, out, "interrupted")
    first = run_cli("compare", *args, "--out", out)
    assert first.returncode == 0, first.stderr
    return SimpleNamespace(out=out, args=args, first=first)


def _parse(args: list[str]) -> S.Study:
    from minigpt.cli import build_parser
    from minigpt.cli.options import given_settings, overrides
    from minigpt.config import preset

    ns = build_parser().parse_args(["compare", *args])
    settings = given_settings(ns)
    name = settings.pop("preset", "quick")
    m, t = overrides(ns, preset(name))
    return S.make_study(name, model=m, train=t, **settings)


def test_study_results_match_schema(study: SimpleNamespace) -> None:
    assert "learned-s1337: resuming from step 2" in study.first.stdout
    assert "alibi-s1337: training" in study.first.stdout
    results = json.loads((study.out / "results.json").read_text())
    assert results_schema.validate(results, build_schema()) == []
    assert results["schema_version"] == results_schema.SCHEMA_VERSION == 3
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    assert [r["name"] for r in results["runs"]] == ["learned-s1337", "alibi-s1337", "t5-s1337"]
    assert results["study"]["verification"]["shared_init_identical"] is True
    assert results["study"]["held_equal"]
    for run in results["runs"]:
        d = study.out / run["dir"]
        assert (d / "config.json").exists() and (d / "model.safetensors").exists()
        tr = run["training"]
        assert tr["steps"] == 4 and tr["final_val_loss"] is not None
        assert tr["params"] > tr["pos_params"] >= 0 and tr["train_time_s"] > 0
        assert len(run["generation"]) == 3 and all(g["text"] for g in run["generation"])
    learned, alibi, t5 = results["runs"]
    # t5 with max distance 64 at L = 16: buckets 16+ are reached only past L, never trained
    t5_rows = {r["length"]: r for r in t5["length_generalization"]["results"]}
    assert t5_rows[16]["untrained"] is None and t5_rows[32]["untrained"].startswith("t5 buckets")
    assert all(r["untrained"] is None for r in alibi["length_generalization"]["results"])
    lg = alibi["length_generalization"]
    assert lg["blocks"] * lg["windows_per_block"] >= 64 // 8
    assert all(len(r["window_loss"]) == lg["blocks"] * lg["windows_per_block"]
               for r in lg["results"])
    # the window baseline of every model at every length past L is its score at L
    for run in (learned, alibi, t5):
        rows = {r["length"]: r for r in run["length_generalization"]["results"]}
        assert all(rows[n]["window_ppl"] == pytest.approx(rows[16]["ppl"], rel=1e-12)
                   for n in (32, 64, 128))
    assert learned["training"]["pos_params"] == 16 * 16 and alibi["training"]["pos_params"] == 0
    # the resumed run's curve covers both pieces with a wall clock that never goes back
    wall = learned["training"]["curves"]["train"]["wall_s"]
    assert learned["training"]["curves"]["train"]["step"] == [1, 2, 3, 4]
    assert wall == sorted(wall)
    rows = {r["length"]: r for r in learned["length_generalization"]["results"]}
    assert set(rows) == {16, 32, 64, 128}
    assert rows[16]["ppl"] is not None
    assert all(rows[n]["ppl"] is None and rows[n]["reason"] == NA_LEARNED for n in (32, 64, 128))
    assert all(r["ppl"] is not None for r in alibi["length_generalization"]["results"])
    # run configs differ only in the encoding
    cfgs = [json.loads((study.out / r["dir"] / "config.json").read_text()) for r in results["runs"]]
    for c in cfgs:
        c["model"].pop("pos")
    assert cfgs[0]["model"] == cfgs[1]["model"] and cfgs[0]["train"] == cfgs[1]["train"]


def test_report_files(study: SimpleNamespace) -> None:
    for name in ("loss_curves.png", "length_ppl.png", "position_loss.png", "cost.png"):
        assert (study.out / name).read_bytes()[:8] == PNG, name
    md = (study.out / "report.md").read_text()
    results = json.loads((study.out / "results.json").read_text())
    summary = results["summary"]["text"]
    assert "alibi" in summary and "learned" in summary
    assert md.index("## Summary") < md.index(summary) < md.index("## Length generalization")
    assert NA_LEARNED in md and "## What was held equal" in md
    assert "(untrained parameters)" in md and "never received a gradient" in summary
    assert "strided" in md.lower() or "stride" in md
    page = (study.out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing from the network


def test_rerun_skips_finished_runs(study: SimpleNamespace) -> None:
    runs = study.out / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/*.safetensors")}
    before |= {p: p.stat().st_mtime_ns for p in runs.glob("*/result.json")}
    again = run_cli("compare", *study.args, "--out", study.out)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished earlier, skipped") == 3
    assert "trained 0, skipped 3" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_second_compare_on_the_same_out_is_refused_while_one_runs(study: SimpleNamespace
                                                                     ) -> None:
    """Two compares writing the same runs at once would corrupt them: the second is refused
    in one sentence while the first holds the study's lock, and nothing is touched."""
    from minigpt.files import exclusive

    before = (study.out / "results.json").read_bytes()
    with exclusive(study.out / "study.lock", "held by this test"):
        r = run_cli("compare", *study.args, "--out", study.out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"another minigpt compare is writing to {study.out}" in r.stderr
    assert (study.out / "results.json").read_bytes() == before


def test_changed_settings_refused_without_force(study: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(study.out, out)
    changed = run_cli("compare", *study.args, "--lengths", "1x,2x", "--out", out)
    assert changed.returncode == 2
    assert "--force" in changed.stderr and "lengths: 16,32,64,128 -> 16,32" in changed.stderr
    assert "Traceback" not in changed.stderr
    steps = run_cli("compare", *study.args, "--max-steps", "5", "--out", out)
    assert steps.returncode == 2 and "train.max_steps: 4 -> 5" in steps.stderr
    # adding an encoding: --force trains only the new one, and the message says so
    added = run_cli("compare", *study.args, "--pos", "learned,alibi,t5,nope", "--out", out)
    assert added.returncode == 2
    assert "pass --force to train only the new encoding(s) nope" in added.stderr
    # --force keeps the trained models (same training config) and only re-evaluates
    forced = run_cli("compare", *study.args, "--lengths", "1x,2x", "--force", "--out", out)
    assert forced.returncode == 0, forced.stderr
    assert "trained 0" in forced.stdout and "trained earlier; evaluating" in forced.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["study"]["lengths"] == [16, 32]


CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var s = document.getElementById("summary");
  var r = {images: imgs.map(function (i) { return i.complete && i.naturalWidth > 0; }),
           summaryVisible: !!s && s.offsetHeight > 0 && s.textContent.length > 20};
  var pre = document.createElement("pre");
  pre.id = "result";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>
"""


def test_report_html_opens_in_a_headless_browser(study: SimpleNamespace, tmp_path: Path
                                                 ) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not found; run `bash scripts/ensure-chromium.sh` (as root) or "
                    "install Chromium to check report.html in a real browser")
    result = report_in_browser(browser, study.out / "report.html", tmp_path)
    assert len(result["images"]) == 4 and all(result["images"]), result
    assert result["summaryVisible"], result


def report_in_browser(browser: str, report: Path, tmp_path: Path) -> dict:
    """Open a report in headless Chromium and return what CHECK_SCRIPT saw: whether every
    image decoded and whether the summary is visible."""
    probe = tmp_path / "probe.html"
    page = report.read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        check=False, capture_output=True, text=True, timeout=90)
    m = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert m, f"no result from the browser: rc={proc.returncode} {proc.stderr[-800:]}"
    return json.loads(m.group(1).replace("&quot;", '"'))


# --- honest numbers: step times and noise ---------------------------------------------------

def test_steady_step_times_leave_out_start_up_and_evaluations() -> None:
    rows = [{"step": 10, "train_loss": 1, "elapsed": 5.0},    # from the start: start-up
            {"step": 20, "train_loss": 1, "elapsed": 6.0},    # 100 ms/step
            {"step": 20, "val_loss": 1, "elapsed": 9.0},      # an evaluation ...
            {"step": 30, "train_loss": 1, "elapsed": 10.0},   # ... inside this interval
            {"step": 40, "train_loss": 1, "elapsed": 11.2},   # 120 ms/step
            {"step": 50, "train_loss": 1, "elapsed": 0.5},    # resumed: the clock restarted
            {"step": 60, "train_loss": 1, "elapsed": 1.6}]    # 110 ms/step
    from minigpt.study.records import steady_step_times

    st = steady_step_times(rows)
    assert st["samples"] == pytest.approx([100.0, 120.0, 110.0])
    assert st["median"] == pytest.approx(110.0) and st["n"] == 3
    assert steady_step_times([])["median"] is None


def test_our_validator_agrees_with_jsonschema(study: SimpleNamespace) -> None:
    """The 25-line validator (kept so results.json is checked with no runtime dependency)
    gives the verdict of the reference implementation, jsonschema's Draft 2020-12 validator,
    on a real results.json and on every single-key deletion and wrong-typed value in it."""
    import random

    from jsonschema import Draft202012Validator

    schema = build_schema()
    Draft202012Validator.check_schema(schema)
    reference = Draft202012Validator(schema)
    results = json.loads((study.out / "results.json").read_text())

    def paths(node, at=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield (*at, k)
                yield from paths(v, (*at, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield (*at, i)
                yield from paths(v, (*at, i))

    def mutated(path, change):
        doc = json.loads(json.dumps(results))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        change(parent, path[-1])
        return doc

    every = list(paths(results))
    random.Random(0).shuffle(every)
    cases = [results]
    for path in every[:150]:
        cases.append(mutated(path, lambda p, k: p.__setitem__(k, {"wrong": "type"})))
        cases.append(mutated(path, lambda p, k: p.__setitem__(k, "text")))
        if isinstance(path[-1], str):
            cases.append(mutated(path, lambda p, k: p.pop(k)))
    verdicts = [(not results_schema.validate(c, schema), reference.is_valid(c)) for c in cases]
    assert verdicts[0] == (True, True)
    assert all(ours == theirs for ours, theirs in verdicts), \
        [i for i, (a, b) in enumerate(verdicts) if a != b][:5]
    assert sum(not ours for ours, _ in verdicts) > 120  # many mutations are violations


def test_evaluation_blocks_are_spread_over_the_validation_text() -> None:
    val = np.arange(100_000)
    blocks = evaluation.eval_blocks(val, [64, 512], 32, tokens=8192, blocks=16)
    assert len(blocks) == 16 and len({len(b) for b in blocks}) == 1
    starts = [int(b[0]) for b in blocks]
    assert starts[0] == 0 and starts[-1] > 90_000  # from the start to the end of the split
    per = evaluation.span_geometry(blocks[0], [64, 512], 32)[1]
    assert per * 16 * 32 >= 8192
    # a split too short for several blocks falls back to one span from its start
    (one,) = evaluation.eval_blocks(np.arange(700), [64, 512], 32, tokens=8192)
    assert one[0] == 0


def test_several_runs_at_once_and_ctrl_c(tmp_path: Path, corpus: Path) -> None:
    """--jobs 2 trains two runs at once in separate processes: the study completes with every
    run and says the machine was shared; Ctrl-C stops both runs at a saved step, and running
    the same command again resumes and completes."""
    import signal
    import sys
    import time

    args = [*TINY, "--pos", "alibi,rope", "--data", str(corpus), "--jobs", "2",
            "--max-steps", "400", "--eval-interval", "200"]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "compare", *args, "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = [out / "runs" / f"{p}-s1337" / "metrics.jsonl" for p in ("alibi", "rope")]
    while time.time() < deadline and not all(m.exists() and m.stat().st_size for m in metrics):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "run the same command again" in stdout
    assert json.loads((out / "study.json").read_text())["status"] == "interrupted"
    again = run_cli("compare", *args, "--out", out, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 run(s) at a time" in again.stdout and "resuming from step" in again.stdout
    results = json.loads((out / "results.json").read_text())
    assert [r["training"]["steps"] for r in results["runs"]] == [400, 400]
    assert results["environment"]["jobs"] == 2 and results["environment"]["torch_threads"] >= 1
    assert any("2 runs at a time" in line for line in results["study"]["held_equal"])


def drawn_figures(results: dict, monkeypatch) -> list:
    """Draw every plot of a study's report and return the figures instead of saving them."""
    from minigpt.study import figures, lm_report, task_report
    from minigpt.study.render import plots_for

    figs = []

    def keep(fig, path, *a, **k):
        figs.append(fig)
        return path

    for module in (figures, lm_report, task_report):
        monkeypatch.setattr(module, "save", keep)
    for _, (_, draw) in plots_for(results).items():
        draw(results, Path("unused.png"))
    return figs


def test_no_study_plot_hides_data_under_its_legend(study: SimpleNamespace, monkeypatch) -> None:
    """Every plot of the LM report (and, in test_tasks, of a task report) keeps its legend
    outside the axes: no plotted point lies under it. With one seed the loss curves do not
    promise a band over seeds."""
    import matplotlib.pyplot as plt

    from minigpt.plots import points_under_legend

    figs = drawn_figures(json.loads((study.out / "results.json").read_text()), monkeypatch)
    assert len(figs) == 4
    assert all(points_under_legend(f) == 0 for f in figs)
    assert not any("std over seeds" in ax.get_title() for f in figs for ax in f.axes)
    for f in figs:
        plt.close(f)


def test_summary_words_what_the_numbers_say() -> None:
    """A model 2.5x worse than the unigram baseline is 'worse than' it, not 'close to' it;
    equal step times are one number, not '69.0-69.0 ms'; one seed never ranks."""
    from minigpt.study import get_objective
    from minigpt.study.paragraph import summarize

    def agg(pos: str, ppl: float) -> dict:
        return {"pos": pos, "extrapolates": True, "seeds": 1, "pos_params": {"mean": 0.0},
                "step_time_ms": {"mean": 69.0, "std": 0.0, "n": 1}, "pos_state": {},
                "length_ppl": [{"length": 64, "ppl": {"mean": ppl, "std": None, "n": 1}}]}

    results = {"study": {"block_size": 64, "lengths": [64], "seeds": [1], "unigram_ppl": 28.6},
               "environment": {"jobs": 1}, "runs": [],
               "aggregates": [agg("rope", 71.5), agg("alibi", 27.0)]}
    text = summarize(results, get_objective("lm"))["text"]
    assert "alibi (27.00) is close to and rope (71.50) is worse than the context-free unigram" \
        in text
    assert "stay near" not in text and "69.0-69.0" not in text
    assert "A steady-state training step took 69.0 ms (median)." in text
    assert "(one seed: described, not ranked)" in text and " is best" not in text
