"""Context extension in the study (`compare --extend`): the rope runs, run at s x L by a
rope_scaling method zero-shot and after a short fine-tune, read like encodings (perplexity
or task accuracy by length, against the window baseline or the input-blind baselines) and
reported with what the fine-tune cost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SMALL_TEXT, run_cli

import minigpt.study as S
from minigpt import checkpoint, evaluation, results_schema
from minigpt.errors import ConfigError
from minigpt.study.schema import build_schema

TINY = ["--pos", "rope,alibi", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
        "--d-model", "16", "--batch-size", "4", "--max-steps", "6", "--eval-interval", "3",
        "--eval-iters", "1", "--log-interval", "1", "--sample-tokens", "0", "--eval-tokens",
        "64", "--lr", "0.01", "--quiet", "--seeds", "2", "--extend", "linear,dynamic,none",
        "--extend-factors", "2", "--finetune-steps", "3"]


def test_variants_from_settings() -> None:
    s = S.make_study("quick", pos="rope,alibi", extend="linear,dynamic,none",
                     extend_factors="2,4", finetune_steps=50)
    labels = [v.label for v in s.variants]
    assert labels == ["rope+linear2x", "rope+linear2x+ft", "rope+dynamic2x", "rope+none2x+ft",
                      "rope+linear4x", "rope+linear4x+ft", "rope+dynamic4x", "rope+none4x+ft"]
    assert s.contenders == ["rope", "alibi", *labels]
    assert len(s.runs()) == 10 and s.runs()[2][1] == "rope+linear2x"  # after its seed's rope
    ft = s.run_config("rope+linear4x+ft", 1338)
    assert (ft.model.block_size, ft.model.rope_scaling, ft.model.rope_factor) == (256, "linear", 4)
    assert ft.model.rope_original_length == 64 and ft.train.max_steps == 50
    assert ft.train.lr == ft.train.min_lr == s.base.train.min_lr and ft.train.seed == 1338
    zero = s.run_config("rope+dynamic2x", 1337)
    assert (zero.model.block_size, zero.model.rope_scaling, zero.model.rope_factor) == \
        (64, "dynamic", 2)
    plain = s.run_config("rope+none2x+ft", 1337)
    assert (plain.model.rope_scaling, plain.model.rope_factor, plain.model.block_size) == \
        ("none", 1, 128)
    # the preset's fine-tune steps, and the extension in the fingerprint (not without it)
    assert S.make_study("quick", pos="rope", extend="yarn").variants[1].finetune_steps == 100
    assert S.make_study("full", pos="rope", extend="yarn").variants[1].finetune_steps == 400
    assert [v.label for v in S.make_study("quick", pos="rope", extend="yarn",
                                          finetune_steps=0).variants] == ["rope+yarn2x",
                                                                          "rope+yarn4x"]
    assert "extension" not in S.make_study("quick", pos="rope").as_dict()
    assert s.fingerprint() != S.make_study("quick", pos="rope,alibi").fingerprint()


@pytest.mark.parametrize("settings, message", [
    ({"extend": "linear,rotary"}, "unknown method(s) rotary"),
    ({"pos": "alibi,nope", "extend": "yarn"}, "add rope to --pos"),
    ({"extend": "yarn", "extend_factors": "1"}, "above 1"),
    ({"extend": "yarn", "extend_factors": "two"}, "numbers above 1"),
    ({"extend": "none", "finetune_steps": 0}, "--finetune-steps above 0"),
    ({"extend": "yarn", "finetune_steps": -1}, "--finetune-steps"),
    ({"extend": "yarn", "finetune_lr": 0}, "--finetune-lr"),
])
def test_bad_extension_settings(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        S.make_study("quick", **{"pos": "rope,alibi", **settings})
    assert message in str(e.value)


def test_bad_extension_flags_exit_2_in_one_sentence(tmp_path: Path) -> None:
    r = run_cli("compare", "--pos", "alibi", "--extend", "yarn", "--out", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "add rope to --pos" in r.stderr and not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("extension")
    corpus = root / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    args = [*TINY, "--data", str(corpus)]
    out = root / "out"
    first = run_cli("compare", *args, "--out", out, timeout=300)
    assert first.returncode == 0, first.stderr
    results = json.loads((out / "results.json").read_text())
    return SimpleNamespace(out=out, args=args, first=first, results=results)


def _run(results: dict, pos: str, seed: int) -> dict:
    return next(r for r in results["runs"] if r["pos"] == pos and r["seed"] == seed)


def _row(run: dict, length: int) -> dict:
    return next(x for x in run["length_generalization"]["results"] if x["length"] == length)


def test_variant_records(study: SimpleNamespace) -> None:
    res = study.results
    assert results_schema.validate(res, build_schema()) == []
    assert res["study"]["encodings"] == ["rope", "alibi", "rope+linear2x", "rope+linear2x+ft",
                                         "rope+dynamic2x", "rope+none2x+ft"]
    assert res["study"]["extension"]["factors"] == [2.0]
    assert len(res["runs"]) == 2 * 6
    zero = _run(res, "rope+linear2x", 1338)
    assert zero["dir"] == "runs/rope-s1338"  # its weights are the rope run's
    assert zero["extension"]["finetune"] == {"steps": 0, "time_s": 0.0, "tokens": 0,
                                             "final_val_loss": None}
    assert zero["config"]["model"]["rope_scaling"] == "linear"
    assert not (study.out / "runs" / "rope+linear2x-s1338" / "model.safetensors").exists()
    ft = _run(res, "rope+linear2x+ft", 1338)
    assert ft["dir"] == "runs/rope+linear2x+ft-s1338"
    assert ft["extension"]["finetune"]["steps"] == 3
    assert ft["extension"]["finetune"]["tokens"] == 3 * 4 * 32  # steps x batch x 2L
    cfg, raw = checkpoint.read_config(study.out / ft["dir"])
    m = cfg.model
    assert (m.block_size, m.rope_scaling, m.rope_factor) == (32, "linear", 2)
    assert raw["init_from"].endswith("rope-s1338") and raw["step"] == 3
    agg = next(a for a in res["aggregates"] if a["pos"] == "rope+linear2x+ft")
    assert agg["extension"]["finetune_steps"] == 3 and agg["seeds"] == 2


def test_zero_shot_numbers_are_the_rope_weights_with_the_method(study: SimpleNamespace) -> None:
    """A zero-shot variant's numbers are what its rope run's weights give with the method,
    recomputed here from the checkpoint; dynamic equals plain rope up to L and not past it."""
    res, out = study.results, study.out
    rope = _run(res, "rope", 1337)
    for label, ext in (("rope+linear2x", {"rope_scaling": "linear", "rope_factor": 2.0}),
                       ("rope+dynamic2x", {"rope_scaling": "dynamic", "rope_factor": 2.0})):
        rec = _run(res, label, 1337)
        model = checkpoint.load(out / "runs" / "rope-s1337", extension=ext)[0]
        spans = evaluation.eval_blocks(np.asarray(_val_tokens(out)), res["study"]["lengths"],
                                       res["study"]["eval_stride"], res["study"]["eval_tokens"],
                                       blocks=16)
        again = evaluation.length_generalization(model, spans, res["study"]["lengths"],
                                                 res["study"]["eval_stride"])
        for row in again["results"]:
            assert row["loss"] == pytest.approx(_row(rec, row["length"])["loss"], rel=1e-6)
    # (a 6-step model barely reads positions, so the differences are small but far above
    # float rounding, which the equality at L bounds)
    dyn, lin = _run(res, "rope+dynamic2x", 1337), _run(res, "rope+linear2x", 1337)
    assert abs(_row(dyn, 16)["loss"] - _row(rope, 16)["loss"]) < 1e-9
    assert abs(_row(dyn, 64)["loss"] - _row(rope, 64)["loss"]) > 1e-8
    assert abs(_row(lin, 16)["loss"] - _row(rope, 16)["loss"]) > 1e-8


def _val_tokens(out: Path) -> list[int]:
    from minigpt.training import load_dataset

    cfg, _ = checkpoint.read_config(out / "runs" / "rope-s1337")
    return list(load_dataset(cfg, verbose=False).val)


def test_report_reads_variants_apart(study: SimpleNamespace) -> None:
    res, out = study.results, study.out
    text = res["summary"]["text"]
    at_L = text.split("At the trained length")[1].split(".")[0]
    assert "rope+" not in at_L  # the encodings' own reading has only the encodings
    assert "Context extension of the rope runs (4 variants" in text
    assert "At s = 2 (length 32; L = 16), perplexity" in text
    assert "each against the window of L of the same weights" in text
    assert "A fine-tune of 3 steps took" in text
    found = res["summary"]["findings"]["extension"]["2"]
    assert found["length"] == 32 and set(found["perplexity"]) == {
        "rope", "alibi", "rope+linear2x", "rope+linear2x+ft", "rope+dynamic2x", "rope+none2x+ft"}
    assert found["best"] == min(found["perplexity"], key=found["perplexity"].get)
    assert set(found["against_reference"]) == set(found["perplexity"])
    assert set(found["against_reference"].values()) <= {"better", "within noise", "worse"}
    md = (out / "report.md").read_text()
    section = md.split("## Context extension")[1].split("\n## ")[0]
    assert "| rope+none2x+ft | none | 2 | 3 |" in section and "extension.png" in section
    training = md.split("## Training")[1].split("\n## ")[0]
    assert "rope+" not in training  # the training table is the encodings'
    assert (out / "extension.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_and_a_retrained_rope_run_redoes_its_variants(study: SimpleNamespace
                                                                   ) -> None:
    """Run again: every finished run is skipped, except the variants of a rope run whose
    weights changed since they were made (as when it was retrained)."""
    weights = study.out / "runs" / "rope-s1337" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    redo = run_cli("compare", *study.args, "--out", study.out, timeout=300)
    assert redo.returncode == 0, redo.stderr
    assert "rope+linear2x-s1337: evaluating rope-s1337 zero-shot" in redo.stdout
    assert "rope+linear2x+ft-s1337: fine-tuning rope-s1337" in redo.stdout
    assert redo.stdout.count("finished earlier, skipped") == 2 + 4 + 2  # rope, alibi; seed 1338
    assert "rope+linear2x-s1338: finished earlier, skipped" in redo.stdout


def test_existing_rope_checkpoints_as_the_rope_runs(study: SimpleNamespace,
                                                   tmp_path: Path) -> None:
    """--rope-checkpoints: existing rope checkpoints (here the study's own rope runs) are
    evaluated, never trained or changed, and extended; their numbers are the ones the study
    that trained them measured."""
    ckpts = [study.out / "runs" / f"rope-s{s}" for s in (1337, 1338)]
    before = {p: (p / "model.safetensors").read_bytes() for p in ckpts}
    out = tmp_path / "adopted"
    r = run_cli("compare", "--rope-checkpoints", ",".join(map(str, ckpts)), "--extend",
                "dynamic", "--extend-factors", "2", "--finetune-steps", "0", "--eval-tokens",
                "64", "--quiet", "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "evaluating the existing checkpoint" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["study"]["seeds"] == [1337, 1338]
    assert res["study"]["encodings"] == ["rope", "rope+dynamic2x"]
    for seed in (1337, 1338):
        mine, theirs = _run(res, "rope", seed), _run(study.results, "rope", seed)
        assert mine["dir"] == str(ckpts[seed - 1337].resolve())
        for n in (16, 32, 64, 128):
            assert _row(mine, n)["loss"] == pytest.approx(_row(theirs, n)["loss"], rel=1e-9)
        assert _row(_run(res, "rope+dynamic2x", seed), 64)["loss"] == pytest.approx(
            _row(_run(study.results, "rope+dynamic2x", seed), 64)["loss"], rel=1e-9)
    assert all((p / "model.safetensors").read_bytes() == b for p, b in before.items())
    assert not list(out.glob("runs/rope-s*/model.safetensors"))  # nothing copied or trained
    for args, message in (
            (["--rope-checkpoints", str(ckpts[0]), "--seeds", "2"], "drop --seeds"),
            (["--rope-checkpoints", str(ckpts[0]), "--n-layer", "2"], "drop --n-layer"),
            (["--rope-checkpoints", f"{ckpts[0]},{ckpts[0]}"], "share a seed"),
            (["--rope-checkpoints", str(study.out / "runs" / "alibi-s1337")],
             "is not a rope checkpoint (its encoding is alibi)"),
            (["--rope-checkpoints", str(tmp_path / "nowhere")], "does not exist")):
        bad = run_cli("compare", *args, "--extend", "yarn", "--out", tmp_path / "bad")
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_task_study_extends_to_longer_instances(tmp_path: Path) -> None:
    """In a task study a variant is read at the longest instance that fits s x L, and its
    fine-tune trains on instances up to that length."""
    out = tmp_path / "copy"
    r = run_cli("compare", "--task", "copy", "--pos", "rope", "--block-size", "24",
                "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "4",
                "--max-steps", "4", "--check-every", "2", "--val-instances", "8",
                "--task-instances", "8", "--eval-iters", "1", "--quiet", "--extend", "yarn",
                "--extend-factors", "2", "--finetune-steps", "2", "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["study"]["encodings"] == ["rope", "rope+yarn2x", "rope+yarn2x+ft"]
    kinds = {k["length"]: k["tokens"] for k in res["study"]["length_kinds"]}
    n = res["summary"]["findings"]["extension"]["2"]["length"]
    assert kinds[n] <= 48 and all(t > 48 for m, t in kinds.items() if m > n)
    ft = _run(res, "rope+yarn2x+ft", res["study"]["seeds"][0])
    assert ft["training"]["checks"] == _run(res, "rope", res["study"]["seeds"][0])[
        "training"]["checks"]  # convergence is the rope run's
    assert "accuracy" in (out / "report.md").read_text().split("## Context extension")[1]
