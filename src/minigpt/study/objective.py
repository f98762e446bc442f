"""Objectives are plug-ins, like the encodings: what a study's models learn and how they are
scored. Each objective owns everything the study needs to know about it: its data, its
evaluation of one trained model, its baselines, which kind of length each evaluation tests,
its convergence check, its summary sentences, tables, plots and schema fragment. The study's
machinery (settings, runs, records, statistics, rendering) never asks which one it has.

Adding an objective is one subclass and one `register` call (registry.py; tests/
test_study_plugin.py registers a toy one); a task added to minigpt.tasks.TASKS is one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .stats import Family

Table = tuple[list[str], list[list[str]]]  # (header, rows) of strings


class Objective:
    """The interface; the defaults suit an objective with nothing special to say."""

    name: ClassVar[str] = ""
    scores_text: ClassVar[bool] = False  # true for language modelling (strided text scoring)
    title: ClassVar[str] = ""  # what the report's title calls it
    prepared: bool = False  # `prepare` has run in this process
    score_name: ClassVar[str] = "score"  # what `score_at` gives, for sentences and tables
    score_fmt: ClassVar[str] = ".3f"
    higher_is_better: ClassVar[bool] = True

    # --- settings --------------------------------------------------------------------------
    def preset_overrides(self, study_preset: dict[str, Any]) -> dict[str, Any]:
        """Train settings this objective applies on top of the study preset."""
        return {}

    def lengths(self, spec: str | None, L: int, preset_spec: str) -> list[int]:
        raise NotImplementedError

    def longest_tokens(self, study: Any) -> int:
        """The longest sequence, in tokens, its evaluation feeds a model."""
        return max(study.lengths)

    def eval_settings(self, study: Any) -> dict[str, Any]:
        """The settings of its evaluation (fingerprinted; a change re-evaluates)."""
        return {}

    def training_settings(self, study: Any) -> dict[str, Any]:
        """Settings that change how runs train (fingerprinted; a change retrains)."""
        return {}

    # --- data and evaluation ---------------------------------------------------------------
    def data(self, study: Any, progress: bool) -> Any:
        """The dataset every run trains on (training.Dataset's interface)."""
        raise NotImplementedError

    def finetune_data(self, study: Any, data: Any, block_size: int) -> Any:
        """The data a context-extension fine-tune at `block_size` trains on (--extend); the
        default is the study's (text windows and task instances follow the run's block
        size)."""
        return data

    def prepare(self, study: Any, data: Any) -> None:
        """Build what evaluation needs once per study (evaluation spans, test sets)."""

    def converged(self, model: Any, study: Any, data: Any) -> float | None:
        """The in-distribution validation score that decides convergence, or None when the
        objective trains for a fixed number of steps."""
        return None

    def evaluate(self, model: Any, tok: Any, cfg: Any, study: Any) -> dict[str, Any]:
        """One trained model's evaluation, stored in its run record."""
        raise NotImplementedError

    def study_fields(self, study: Any) -> dict[str, Any]:
        """What the objective adds to results.json's `study` (baselines, spans, prompt)."""
        return {}

    def held_equal(self, study: Any, vocab: int) -> list[str]:
        """Sentences for the report's 'what was held equal': data and evaluation."""
        return []

    # --- results -----------------------------------------------------------------------------
    def aggregate(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Per-encoding aggregate fields from that encoding's run records (all seeds)."""
        return {}

    def comparisons(self, results: dict[str, Any], family: Family) -> None:
        """Register every comparison the summary will make (Holm runs over all of them)."""

    def summary(self, results: dict[str, Any], family: Family
                ) -> tuple[list[str], dict[str, Any]]:
        """Sentences and findings, from the numbers and the resolved family."""
        return [], {}

    def tables(self, results: dict[str, Any]) -> dict[str, Table]:
        return {}

    def sections(self, results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        """(title, intro, [table key or png name, ...]) of the report's middle, in order;
        the generic 'training' table and plots are added after these."""
        return []

    def plots(self) -> dict[str, tuple[str, Callable[[dict[str, Any], Path], Path]]]:
        """PNG name -> (caption, draw function)."""
        return {}

    def definitions(self, results: dict[str, Any]) -> list[str]:
        return []

    def samples(self, results: dict[str, Any]) -> list[tuple[str, float, str]]:
        """(encoding, temperature, text) to show, if the objective samples text."""
        return []

    # --- the shared reading of one length (used by the context-extension section) ------------
    def score_at(self, agg: dict[str, Any], length: int) -> dict[str, Any] | None:
        """The aggregate's headline score at an evaluation length ({mean, std, n}), or None."""
        return None

    def score_items(self, results: dict[str, Any], pos: str, length: int) -> Any:
        """Per seed, the evaluation items behind `score_at` (stats.Items), for comparisons."""
        raise NotImplementedError

    reference_name: ClassVar[str] = ""  # what `reference` is, for sentences

    def reference(self, results: dict[str, Any], pos: str, length: int
                  ) -> tuple[Any, float] | None:
        """What `pos`'s score at `length` must beat to mean something: (its Items, its
        value), or None."""
        return None

    def length_within(self, results: dict[str, Any], tokens: int) -> int | None:
        """The longest evaluation length whose sequences fit in `tokens` tokens."""
        fit = [n for n in results["study"]["lengths"] if n <= tokens]
        return max(fit) if fit else None

    def run_schema(self) -> dict[str, Any]:
        """Properties this objective adds to each run record in results.json."""
        return {}

    def aggregate_schema(self) -> dict[str, Any]:
        """Properties this objective adds to each aggregate in results.json."""
        return {}

    def study_schema(self) -> dict[str, Any]:
        """Properties this objective adds to results.json's `study`."""
        return {}
