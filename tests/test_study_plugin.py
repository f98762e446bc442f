"""A new objective is one class and one registry line: a toy objective trains, evaluates,
summarizes and reports through the study's machinery, which never asks which objective it has
(as tests/test_plugin.py shows for encodings)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_TEXT

from minigpt import results_schema
from minigpt.study import Objective, make_study, register, run_study
from minigpt.study.registry import REGISTRY
from minigpt.study.schema import build_schema
from minigpt.study.stats import Items
from minigpt.study.summary import rank


class NextTokenAtL(Objective):
    """Toy: the mean loss of the last token of fixed validation windows of length L."""

    name = "toy"
    title = "toy next-token loss"

    def lengths(self, spec: str | None, L: int, preset_spec: str) -> list[int]:
        return [L]

    def data(self, study: Any, progress: bool) -> Any:
        from minigpt.training import load_dataset

        return load_dataset(study.base, verbose=False)

    def prepare(self, study: Any, data: Any) -> None:
        import torch

        L = study.block_size
        ids = torch.as_tensor(data.val[: 8 * (L + 1)].astype("int64")).view(8, L + 1)
        self.x, self.y = ids[:, :-1], ids[:, -1]

    def evaluate(self, model: Any, tok: Any, cfg: Any, study: Any) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            logits, _ = model(self.x)
        loss = F.cross_entropy(logits[:, -1].float(), self.y, reduction="none")
        return {"toy": {"item_loss": [float(v) for v in loss]}, "generation": []}

    def aggregate(self, rs: list[dict[str, Any]]) -> dict[str, Any]:
        vals = [sum(r["toy"]["item_loss"]) / len(r["toy"]["item_loss"]) for r in rs]
        return {"toy_loss": sum(vals) / len(vals)}

    def summary(self, results: dict[str, Any], family: Any) -> tuple[list, dict]:
        scores = sorted(((a["pos"], a["toy_loss"]) for a in results["aggregates"]),
                        key=lambda x: x[1])

        def items(pos: str) -> Items:
            return Items.of([r["toy"]["item_loss"] for r in results["runs"] if r["pos"] == pos])

        return [rank(results, family, "toy", scores, items, ".3f", "Toy loss")], {"toy": True}

    def tables(self, results: dict[str, Any]) -> dict[str, Any]:
        return {"toy": (["encoding", "toy loss"],
                        [[a["pos"], f"{a['toy_loss']:.3f}"] for a in results["aggregates"]])}

    def sections(self, results: dict[str, Any]) -> list:
        return [("Toy", "The last token of eight windows.", ["toy"])]

    def run_schema(self) -> dict[str, Any]:
        return {"toy": {"type": "object", "required": ["item_loss"]}}

    def aggregate_schema(self) -> dict[str, Any]:
        return {"toy_loss": {"type": "number"}}


@pytest.fixture
def toy_objective():
    register("toy", NextTokenAtL)
    yield
    REGISTRY.pop("toy")


def test_a_toy_objective_runs_a_whole_study(toy_objective, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    study = make_study("quick", task="toy", pos="rope,alibi", seeds=2, jobs=1,
                       model={"block_size": 16, "n_layer": 1, "n_head": 2, "d_model": 16},
                       train={"data": str(corpus), "max_steps": 3, "batch_size": 4,
                              "eval_interval": 3, "eval_iters": 1, "log_interval": 1,
                              "sample_tokens": 0})
    out = run_study(study, tmp_path / "out", progress=False, log=lambda m: None)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert out.results is not None and results_schema.validate(results, build_schema()) == []
    assert build_schema()["properties"]["runs"]["items"]["properties"]["toy"]
    assert all(len(r["toy"]["item_loss"]) == 8 for r in results["runs"])
    text = results["summary"]["text"]
    assert text.startswith("Toy loss (mean") is False and "Toy loss, " in text
    assert results["summary"]["findings"]["toy"] is True
    assert any(c["key"].startswith("toy:") for c in results["summary"]["findings"]["comparisons"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Toy" in md and "| encoding | toy loss |" in md and "## Training" in md
    assert all(math.isfinite(a["toy_loss"]) for a in results["aggregates"])
