"""scripts/paired_studies.py, the paired comparison of two task studies that differ in one
setting (the docs' randomized-positions results rest on it): a difference every seed shows is
called, identical evaluations are not, and lengths a run was not evaluated at (learned past L)
are left out instead of crashing the script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_studies.py"


def _script():
    spec = importlib.util.spec_from_file_location("paired_studies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(out: Path, correct_at_4: list[float], rng: np.random.Generator) -> Path:
    """A task study's results.json: rope and learned, seeds 1-3, trained up to length 2."""
    shared = np.random.default_rng(7)  # length 8: the same instances right in both studies
    at_8 = [shared.integers(0, 2, 200).tolist() for _ in range(3)]
    runs = []
    for k, seed in enumerate((1, 2, 3)):
        hits = (rng.random(200) < correct_at_4[k]).astype(int).tolist()
        for pos in ("rope", "learned"):
            rows = [{"length": 2, "accuracy": 1.0, "per_instance": [1] * 200}]
            if pos == "rope":
                rows += [{"length": 4, "accuracy": float(np.mean(hits)), "per_instance": hits},
                         {"length": 8, "accuracy": float(np.mean(at_8[k])),
                          "per_instance": at_8[k]}]
            else:  # learned positions stop at L: no accuracy, no items
                rows += [{"length": n, "accuracy": None, "per_instance": []} for n in (4, 8)]
            runs.append({"pos": pos, "seed": seed, "task_accuracy": {"results": rows}})
    study = {"task": "copy", "lengths": [2, 4, 8], "seeds": [1, 2, 3], "block_size": 8,
             "max_train_length": 2, "encodings": ["rope", "learned"]}
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"study": study, "runs": runs}))
    return out


def test_paired_studies_calls_a_difference_every_seed_shows_and_skips_unevaluated_lengths(
        tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    a = _study(tmp_path / "a", [0.90, 0.95, 0.85], rng)
    b = _study(tmp_path / "b", [0.05, 0.10, 0.00], rng)
    _script().main(str(a), str(b))
    lines = capsys.readouterr().out.splitlines()
    assert "(2 comparisons, seeds [1, 2, 3])" in lines[0]
    by_key = {line.split()[0]: line for line in lines[1:]}
    assert set(by_key) == {"rope@4", "rope@8"}  # learned has nothing past L to pair
    assert by_key["rope@4"].endswith(" differs")
    assert float(by_key["rope@4"].split()[1]) > 0.7
    assert by_key["rope@8"].endswith("within noise") and " +0.000 " in by_key["rope@8"]
