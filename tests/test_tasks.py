"""Algorithmic tasks: correct instances, pure and held-out batches, exact match that equals
greedy decoding, and a tiny task study end to end (results.json, report, browser)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import chromium, run_cli
from test_study import PNG, report_in_browser

from minigpt import results_schema, tasks
from minigpt.config import merge, preset
from minigpt.config import IGNORE_INDEX
from minigpt.errors import ConfigError
from minigpt.generation import generate
from minigpt.model import GPT
from minigpt.study import make_study
from minigpt.study.schema import build_schema


def test_instances_say_what_the_docs_say() -> None:
    rng = random.Random(0)
    for _ in range(50):
        p, a = tasks.Copy().instance(rng, 7)
        assert p.endswith("|") and a == p[:-1] and set(a) <= set(tasks.LETTERS)
        p, a = tasks.Reverse().instance(rng, 7)
        assert a == p[:-1][::-1]
        p, a = tasks.Add().instance(rng, 5)
        x, y = p[:-1].split("+")
        assert len(x) == len(y) == 5 and len(a) == 6
        assert int(a[::-1]) == int(x[::-1]) + int(y[::-1])  # every number least-significant first
    assert tasks.Add().instance(random.Random(1), 3) == ("291+417=", "6090")  # 192+714 = 906
    for name, L, nmax in (("copy", 64, 31), ("reverse", 64, 31), ("add", 64, 20), ("copy", 32, 15)):
        t = tasks.get_task(name)
        assert t.max_train_length(L) == nmax
        assert t.example_tokens(nmax) <= L < t.example_tokens(nmax + 1)
    assert tasks.test_lengths(tasks.Copy(), 64) == [16, 31, 46, 62, 93, 124]  # up to 4x
    assert tasks.test_lengths(tasks.Copy(), 64, "1x,8") == [8, 31]
    for bad in ("0", "x", "-1x"):
        with pytest.raises(ConfigError, match="--lengths"):
            tasks.test_lengths(tasks.Copy(), 64, bad)
    with pytest.raises(ConfigError, match="unknown task"):
        tasks.get_task("sort")


def test_recall_instances_look_up_one_of_their_distinct_keys() -> None:
    rng, task = random.Random(0), tasks.get_task("recall")
    for n in (1, 5, 40):
        prompt, answer = task.instance(rng, n)
        pairs, query = prompt.split("|")
        keys = [pairs[i: i + 3] for i in range(0, len(pairs), 4)]
        values = [pairs[i + 3] for i in range(0, len(pairs), 4)]
        assert len(keys) == len(set(keys)) == n and set("".join(keys)) <= set(tasks.LETTERS)
        assert answer == values[keys.index(query)] and answer in tasks.DIGITS
        assert len(prompt) + len(answer) + 1 == task.example_tokens(n)
    assert task.max_train_length(64) == 14 and task.chance == 0.1
    assert tasks.test_lengths(task, 64) == [7, 14, 21, 28, 42, 56]
    with pytest.raises(ConfigError, match="at most 1000"):
        tasks.test_lengths(task, 64, "1001")


def test_dependencies_are_the_distances_an_exact_answer_needs() -> None:
    """dependency(n) is the longest distance from an answer token back to an input token it
    needs, checked on real instances: the needed token sits exactly that far back."""
    rng = random.Random(3)
    for n in (1, 5, 12):
        p, a = tasks.Copy().instance(rng, n)
        text = p + a  # answer token i at len(p) + i needs prompt token i
        assert max(len(p) + i - i for i in range(n)) == tasks.Copy().dependency(n) == n + 1
        assert all(text[len(p) + i] == text[i] for i in range(n))
        p, a = tasks.Reverse().instance(rng, n)
        dist = [len(p) + i - (n - 1 - i) for i in range(n)]  # needs prompt token n-1-i
        assert all((p + a)[len(p) + i] == p[n - 1 - i] for i in range(n))
        assert max(dist) == tasks.Reverse().dependency(n) == 2 * n and min(dist) == 2
        p, a = tasks.Add().instance(rng, n)
        assert len(p) + 0 - 0 == tasks.Add().dependency(n) == 2 * n + 2  # sum digit 0, a digit 0
        p, a = tasks.Passkey().instance(rng, n)
        text = p + a
        assert all(text[len(p) + j] == text[j] for j in range(3))
        assert len(p) - 0 == tasks.Passkey().dependency(n) == n + 4
    rec = tasks.Recall()
    p, a = rec.instance(random.Random(0), 6)
    keys = [p[4 * i: 4 * i + 3] for i in range(6)]
    q = keys.index(p.split("|")[1])
    assert len(p) - (4 * q + 3) <= rec.dependency(6) == 4 * 6 + 4  # the first pair is farthest


def test_baselines_score_input_blind_answers_on_known_instances() -> None:
    """recall's key-blind baseline answers the most frequent value in the prompt (ties: the
    first to occur); every task's best constant answer is the most frequent answer."""
    rec = tasks.Recall()
    inst = [("abc1abd1abe2|abe", "2"),   # 1 is most frequent: wrong
            ("abc3abd3abe2|abc", "3"),   # right
            ("abc4abd5abe6|abd", "5"),   # a three-way tie: the first, 4: wrong
            ("abc7abd8abe8|abe", "8")]   # right
    b = rec.baselines(inst)
    assert b["most frequent value (key-blind)"] == [0, 1, 0, 1]
    assert b["best constant answer"] == [0, 0, 0, 1]  # all answers distinct: the max, "8"
    copy = tasks.Copy().baselines([("ab|", "ab"), ("cd|", "cd"), ("ab|", "ab")])
    assert copy == {"best constant answer": [1, 0, 1]}
    # measured on the quick shapes' test instances, the key-blind rule is what the models
    # had to beat: about 0.31 at 7 pairs and 0.17 at 56 (guessing a digit: 0.10)
    data = tasks.TaskDataset.build("recall", 64)
    rates = {n: np.mean(rec.baselines(tasks.test_set(data, n, 1000, 1337))[
        "most frequent value (key-blind)"]) for n in (7, 56)}
    assert 0.27 < rates[7] < 0.35 and 0.13 < rates[56] < 0.21


def test_batches_are_pure_held_out_and_score_the_answer_only() -> None:
    data = tasks.TaskDataset.build("copy", 32)
    kw = dict(micro=0, batch_size=64, block_size=32, seed=3)
    x1, y1 = data.batch("train", step=4, **kw)
    x2, y2 = data.batch("train", step=4, **kw)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # a pure function of seed and step
    assert not torch.equal(x1, data.batch("train", step=5, **kw)[0])
    assert x1.shape[1] <= 32  # every example fits in L
    sep, eos = data.tokenizer.stoi["|"], data.tokenizer.stoi["."]
    for split, held in (("train", False), ("val", True)):
        x, y = data.batch(split, step=1, **kw)
        for xi, yi in zip(x.tolist(), y.tolist()):
            k = xi.index(sep)  # the prompt is x[:k + 1]
            prompt = data.tokenizer.decode(xi[: k + 1])
            assert tasks.held_out(prompt) is held  # test prompts never appear in training
            scored = [t for t in yi if t != IGNORE_INDEX]
            answer = data.tokenizer.decode(scored[:-1])
            assert scored[-1] == eos and answer == prompt[:-1]  # the answer and '.', no prompt
            assert all(t == IGNORE_INDEX for t in yi[:k])
    # DDP ranks get disjoint rows of the same global batch
    def texts(x: torch.Tensor) -> list[str]:
        return [data.tokenizer.decode(row) for row in x.tolist()]

    full = data.batch("train", step=2, micro=0, batch_size=8, block_size=32, seed=3)[0]
    r1 = data.batch("train", step=2, micro=0, batch_size=4, block_size=32, seed=3, rank=1,
                    world=2)[0]
    assert texts(r1) == texts(full)[4:]


def test_exact_match_is_greedy_decoding() -> None:
    """An instance counts as correct exactly when greedy generation reproduces its answer:
    answers made by greedy generation all count, and changing one answer token makes each
    instance count as wrong."""
    data = tasks.TaskDataset.build("reverse", 32)
    cfg = merge(preset("tiny"), {"pos": "rope", "vocab_size": data.tokenizer.vocab_size,
                                 "block_size": 32}, {})
    model = GPT(cfg.model, seed=4).eval()
    rng = random.Random(9)
    made, broken = [], []
    for n in (3, 6, 9):
        for _ in range(4):
            prompt, answer = data.task.instance(rng, n)
            idx = torch.tensor([data.tokenizer.encode(prompt)])
            out = generate(model, idx, len(answer) + 1, temperature=0.0, dtype="float32")
            greedy = data.tokenizer.decode(out[0, idx.shape[1]:].tolist())
            # the final '.' is part of the answer: right only if the model then stops
            made.append(((prompt, greedy[:-1]), greedy[-1] == "."))
            pos = rng.randrange(len(answer))
            other = next(c for c in data.tokenizer.chars if c != greedy[pos])
            broken.append((prompt, greedy[:pos] + other + greedy[pos + 1:-1]))
    for k in (0, 4, 8):  # instances of one length are batched
        group = made[k: k + 4]
        assert tasks.exact_match(model, data, [i for i, _ in group]) == \
            [int(stops) for _, stops in group]
    for group in (broken[:4], broken[4:8], broken[8:]):
        assert tasks.exact_match(model, data, group) == [0] * 4


def test_evaluate_task_reports_na_past_L_for_learned_and_flags_untrained() -> None:
    data = tasks.TaskDataset.build("copy", 32)
    res = {}
    for pos, extra in (("learned", {}), ("t5", {"t5_max_distance": 64}), ("alibi", {})):
        cfg = merge(preset("tiny"), {"pos": pos, "vocab_size": data.tokenizer.vocab_size,
                                     "block_size": 32, **extra}, {})
        res[pos] = {r["length"]: r for r in tasks.evaluate_task(
            GPT(cfg.model, seed=1), data, [8, 15, 30], 20, seed=1)["results"]}
    assert res["learned"][15]["accuracy"] is not None
    assert res["learned"][30]["accuracy"] is None and "stop at L" in res["learned"][30]["reason"]
    assert res["t5"][8]["untrained"] is None
    assert res["t5"][30]["untrained"].startswith("t5 buckets")  # 62-token examples, max 64
    assert all(len(r["per_instance"]) == 20 for r in res["alibi"].values())
    lo, hi = res["alibi"][8]["ci_low"], res["alibi"][8]["ci_high"]
    assert 0 <= lo <= res["alibi"][8]["accuracy"] <= hi <= 1


TINY_TASK = ["--task", "copy", "--pos", "learned,rope", "--block-size", "16", "--n-layer", "1",
             "--n-head", "2", "--d-model", "16", "--batch-size", "8", "--max-steps", "6",
             "--eval-interval", "3", "--eval-iters", "1", "--log-interval", "1",
             "--task-instances", "12", "--seeds", "2", "--check-every", "3", "--quiet"]


@pytest.fixture(scope="module")
def task_study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("task") / "out"
    proc = run_cli("compare", *TINY_TASK, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(out=out, proc=proc)


def test_task_study_outputs(task_study: SimpleNamespace) -> None:
    out = task_study.out
    results = json.loads((out / "results.json").read_text())
    assert results_schema.validate(results, build_schema()) == []
    assert results["schema_version"] == 3 and results["study"]["task"] == "copy"
    assert results["study"]["lengths"] == [4, 7, 10, 14, 21, 28]  # nmax 7 for L = 16
    # the run order rotates per seed, so no encoding always trains last
    assert results["study"]["run_order"] == ["learned-s1337", "rope-s1337", "rope-s1338",
                                             "learned-s1338"]
    for run in results["runs"]:
        acc = {r["length"]: r for r in run["task_accuracy"]["results"]}
        assert all(r["n"] == 12 for r in acc.values())
        if run["pos"] == "learned":
            assert acc[28]["accuracy"] is None and acc[7]["accuracy"] is not None
        else:
            assert all(r["accuracy"] is not None for r in acc.values())
        assert run["training"]["step_time_ms"]["n"] >= 1
    # both seeds see the same test instances, so their per-instance results are comparable
    agg = {a["pos"]: a for a in results["aggregates"]}
    assert agg["rope"]["accuracy"][0]["accuracy"]["n"] == 2
    for name in ("accuracy.png", "loss_curves.png", "cost.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert not (out / "length_ppl.png").exists()
    md = (out / "report.md").read_text()
    assert "## Exact-match accuracy by instance length" in md and "Trained on copy" in md
    assert "n/a, learned positions stop at L" in md
    # 6 steps teach nothing: no run converged, so nothing is read past L
    text = results["summary"]["text"]
    assert "Did not converge, so not read past L: learned (0 of 2 seeds" in text
    assert "accuracy" in text and "At length 10" not in text and "At length 28" not in text
    assert results["summary"]["findings"]["converged"] == []
    for run in results["runs"]:  # checked every 3 steps, stopped by the budget
        assert [c["step"] for c in run["training"]["checks"]] == [3, 6]
        assert run["training"]["stopped"] == "budget"
    kinds = {k["length"]: (k["kind"], k["dependency"]) for k in results["study"]["length_kinds"]}
    assert kinds == {4: ("in distribution", 5), 7: ("in distribution", 8),
                     10: ("sequence past L", 11), 14: ("sequence past L", 15),
                     21: ("dependency past L", 22), 28: ("dependency past L", 29)}
    base = results["study"]["baselines"]["7"]["best constant answer"]
    assert len(base["per_instance"]) == 12 and base["accuracy"] == sum(base["per_instance"]) / 12


def test_task_report_opens_in_a_headless_browser(task_study: SimpleNamespace,
                                                 tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not found; run `bash scripts/ensure-chromium.sh` (as root)")
    result = report_in_browser(browser, task_study.out / "report.html", tmp_path)
    assert len(result["images"]) == 3 and all(result["images"]), result
    assert result["summaryVisible"], result


def test_task_study_settings() -> None:
    s = make_study("quick", task="add", pos="rope,alibi")
    assert s.base.train.batching == "documents" and s.base.train.sample_tokens == 0
    assert s.lengths == [10, 20, 30, 40, 60, 80]  # up to 4x the longest trained (20 digits)
    assert s.fingerprint() != make_study("quick", task="copy", pos="rope,alibi").fingerprint()
    assert "task_instances" in s.as_dict() and "eval_tokens" not in s.as_dict()
    assert s.as_dict()["criterion"] == 0.95
    assert s.fingerprint() != make_study("quick", task="add", pos="rope,alibi",
                                         criterion=0.9).fingerprint()


def test_a_run_that_missed_the_criterion_is_never_read_past_L(task_study: SimpleNamespace
                                                              ) -> None:
    """Take the tiny study's results and make rope converge on both seeds while learned
    does not: only rope is read past L, learned is listed as not converged, and only a
    dependency-past-L length can carry a claim about using context past L."""
    from minigpt.study import get_objective
    from minigpt.study.paragraph import summarize

    results = json.loads((task_study.out / "results.json").read_text())
    for run in results["runs"]:
        ok = run["pos"] == "rope"
        run["training"]["checks"] = [{"step": 3, "val_accuracy": 0.97 if ok else 0.4}]
        for row in run["task_accuracy"]["results"]:
            if row["accuracy"] is not None:
                hits = [1] * 9 + [0] * 3 if ok else [1] * 12
                row.update(per_instance=hits, correct=sum(hits), accuracy=sum(hits) / 12)
    obj = get_objective("copy")
    from minigpt.study.records import aggregate

    results["aggregates"] = aggregate(results["runs"], ["learned", "rope"], obj)
    out = summarize(results, obj)
    text, findings = out["text"], out["findings"]
    assert findings["converged"] == ["rope"]
    assert "Did not converge, so not read past L: learned (0 of 2 seeds" in text
    assert "At length 10 (22 tokens; longest dependency 11 <= L: sequence past L)" in text
    assert "At length 21 (44 tokens; longest dependency 22 > L: dependency past L)" in text
    past = [s for s in text.split(". ") if s.startswith("At length") and "accuracy" in s]
    assert past and all("learned" not in s for s in past)  # 1.00 everywhere, never read
    assert set(findings["uses_context_past_L"]) == {"21", "28"}


def test_task_plots_keep_their_legends_off_the_data(task_study: SimpleNamespace,
                                                    monkeypatch) -> None:
    import matplotlib.pyplot as plt
    from test_study import drawn_figures

    from minigpt.plots import points_under_legend

    figs = drawn_figures(json.loads((task_study.out / "results.json").read_text()), monkeypatch)
    assert len(figs) == 3 and all(points_under_legend(f) == 0 for f in figs)
    for f in figs:
        plt.close(f)
