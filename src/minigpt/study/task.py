"""Algorithmic tasks as study objectives (one per task in `minigpt.tasks.TASKS`): exact-match
accuracy by instance length, trained to a convergence criterion, against input-blind
baselines, with every length past L labelled by what it tests.

Three rules make a past-L reading mean something:

1. Converged before compared. A run trains until its accuracy on held-out validation
   instances of the longest trained length reaches the criterion (checked every few hundred
   steps) or its step budget ends; only an encoding whose every seed converged is read past L
   (Kazemnejad et al. 2023 read only models near 100 % in distribution). Past-L accuracy of an
   unconverged model mixes learning speed with extrapolation.
2. Say which length. A test past L whose longest needed dependency stays within L tests a
   longer *sequence*; only a dependency past L tests the use of context past L.
3. Beat the baselines. A model has learned, or uses context, only where it beats the best
   input-blind baseline on the same instances beyond noise.
"""

from __future__ import annotations

from typing import Any

from ..tasks import TaskDataset, baseline_hits, evaluate_task, get_task, test_lengths
from ..tasks import describe as describe_task
from .objective import Objective, Table
from .task_report import (DEP, IN, SEQ, _acc_at, _accuracy_table, _convergence,
                          _convergence_table, acc_items, baseline_items, best_baseline,
                          last_val, plot_accuracy, steps_to)
from .stats import Family, mean_std
from .summary import Part, join, n_seeds, noise_words, rank

_STATS = {"type": "object", "required": ["mean", "std", "n"],
          "properties": {"mean": {"type": ["number", "null"]}, "std": {"type": ["number", "null"]},
                         "n": {"type": "integer"}}}
_INT, _NUM_OR_NULL = {"type": "integer"}, {"type": ["number", "null"]}
_TASK_ROW = {
    "type": "object",
    "required": ["length", "tokens", "multiple", "dependency", "n", "correct", "accuracy",
                 "ci_low", "ci_high", "reason", "untrained", "per_instance"],
    "properties": {"length": _INT, "tokens": _INT, "dependency": {
        "type": "integer", "description": "the longest distance in tokens from an answer token "
        "to an input token it needs"}, "correct": {"type": ["integer", "null"]},
        "accuracy": _NUM_OR_NULL, "per_instance": {"type": "array", "items": _INT}}}


class TaskObjective(Objective):
    scores_text = False

    score_name, score_fmt, higher_is_better = "accuracy", ".3f", True

    def __init__(self, name: str) -> None:
        self.name = name
        self.task = get_task(name)
        self.title = f"task {name}"

    # --- settings and data -------------------------------------------------------------------
    def preset_overrides(self, study_preset: dict[str, Any]) -> dict[str, Any]:
        return dict(study_preset.get("task", {}))

    def lengths(self, spec: str | None, L: int, preset_spec: str) -> list[int]:
        return test_lengths(self.task, L, spec)

    def longest_tokens(self, study: Any) -> int:
        return self.task.example_tokens(max(study.lengths))

    def eval_settings(self, study: Any) -> dict[str, Any]:
        return {"task_instances": study.task_instances}

    def training_settings(self, study: Any) -> dict[str, Any]:
        st = study.settings
        return {"criterion": st.criterion, "check_every": st.check_every,
                "val_instances": st.val_instances}

    def data(self, study: Any, progress: bool) -> Any:
        return TaskDataset.build(self.name, study.block_size)

    def prepare(self, study: Any, data: Any) -> None:
        self.dataset = data
        self.baselines = baseline_hits(data, study.lengths, study.task_instances, study.seeds[0])

    def converged(self, model: Any, study: Any, data: Any) -> float | None:
        from ..tasks import validation_accuracy

        return validation_accuracy(model, data, study.settings.val_instances, study.seeds[0])

    def evaluate(self, model: Any, tok: Any, cfg: Any, study: Any) -> dict[str, Any]:
        acc = evaluate_task(model, self.dataset, study.lengths, study.task_instances,
                            seed=study.seeds[0])
        return {"task_accuracy": acc, "generation": []}

    def score_at(self, agg: dict[str, Any], length: int) -> dict[str, Any] | None:
        return next((row["accuracy"] for row in agg["accuracy"] if row["length"] == length
                     and row["accuracy"]["mean"] is not None), None)

    def score_items(self, results: dict[str, Any], pos: str, length: int) -> Any:
        return acc_items(results, pos, length)

    reference_name = "the best input-blind baseline on the same instances"

    def reference(self, results: dict[str, Any], pos: str, length: int
                  ) -> tuple[Any, float] | None:
        return baseline_items(results, length), best_baseline(results["study"], length)[1]

    def length_within(self, results: dict[str, Any], tokens: int) -> int | None:
        fit = [k["length"] for k in results["study"]["length_kinds"] if k["tokens"] <= tokens]
        return max(fit) if fit else None

    def kinds(self, L: int, lengths: list[int]) -> list[dict[str, Any]]:
        nmax = self.task.max_train_length(L)
        out = []
        for n in lengths:
            dep = self.task.dependency(n)
            kind = IN if n <= nmax else DEP if dep > L else SEQ
            out.append({"length": n, "tokens": self.task.example_tokens(n), "dependency": dep,
                        "kind": kind})
        return out

    def study_fields(self, study: Any) -> dict[str, Any]:
        return {"max_train_length": self.task.max_train_length(study.block_size),
                "criterion": study.settings.criterion, "check_every": study.settings.check_every,
                "length_kinds": self.kinds(study.block_size, study.lengths),
                "baselines": {n: {name: {"accuracy": sum(h) / len(h), "per_instance": h}
                                  for name, h in b.items()} for n, b in self.baselines.items()}}

    def held_equal(self, study: Any, vocab: int) -> list[str]:
        st = study.settings
        return [(f"Task: {describe_task(self.name, study.block_size)}; instances generated from "
                 "the seed, one per row, loss on the answer and its final '.'; a character "
                 f"vocabulary of {vocab}."),
                (f"Training: until validation accuracy at the longest trained length reaches "
                 f"{st.criterion:g} ({st.val_instances} held-out validation instances, checked "
                 f"every {st.check_every} steps) or {study.base.train.max_steps} steps run out."),
                (f"Evaluation instances: the same {study.task_instances} held-out instances per "
                 "length for every model (their prompts are never drawn in training); exact "
                 "match of greedy decoding over the whole answer and its final '.'.")]

    # --- results -----------------------------------------------------------------------------
    def aggregate(self, rs: list[dict[str, Any]]) -> dict[str, Any]:
        from .records import col_stats

        crit = [steps_to(r) for r in rs]
        return {"accuracy": [{k: v for k, v in row.items() if k != "multiple"}
                             for row in col_stats(rs, "task_accuracy", ("accuracy",))],
                "converged": sum(c is not None for c in crit),
                "steps_to_criterion": mean_std(crit),
                "val_accuracy": mean_std(last_val(r) for r in rs)}

    def summary(self, results: dict[str, Any], family: Family
                ) -> tuple[list[Part], dict[str, Any]]:
        study, aggs = results["study"], results["aggregates"]
        nmax, L = study["max_train_length"], study["block_size"]
        steps = study["base_config"]["train"]["max_steps"]
        findings: dict[str, Any] = {"task": self.name, "max_train_length": nmax}
        parts: list[Part] = [
            f"Trained on {self.name} instances of length 1-{nmax} (L = {L} tokens) until "
            f"validation accuracy at length {nmax} reached {study['criterion']:g} or {steps} "
            f"steps ran out; tested on {study['task_instances']} held-out instances per length, "
            "the final '.' included."]
        done = [a["pos"] for a in aggs if a["converged"] == a["seeds"]]
        findings["converged"] = done
        parts += _convergence(aggs, steps)
        parts += self._learned(results, family, findings, done)
        kinds = {k["length"]: k for k in study["length_kinds"]}
        read = [p for p in done if next(a for a in aggs if a["pos"] == p)["extrapolates"]]
        for kind in (SEQ, DEP):
            lens = [n for n in study["lengths"] if kinds[n]["kind"] == kind]
            if lens and read:
                parts += self._past(results, family, findings, read, lens, kinds)
        stuck = [a["pos"] for a in aggs if not a["extrapolates"]]
        if stuck and any(k["kind"] != IN for k in kinds.values()):
            parts.append(f"{join(stuck)} cannot be evaluated on examples longer than L.")
        return parts, findings

    def _learned(self, results: dict[str, Any], family: Family, findings: dict[str, Any],
                 done: list[str]) -> list[Part]:
        """At the longest trained length: every unconverged encoding against the best baseline
        (a converged one is far above any input-blind answer by construction)."""
        study = results["study"]
        n = study["max_train_length"]
        name, base = best_baseline(study, n)
        rest = [a for a in results["aggregates"] if a["pos"] not in done]
        if not rest:
            return []
        parts: list[Part] = [f"The best input-blind baseline at length {n} is the {name} "
                             f"({base:.2f})."]
        if n_seeds(results) < 2:
            return parts
        keys = {a["pos"]: family.add(f"learned:{a['pos']}", acc_items(results, a["pos"], n),
                                     baseline_items(results, n)).key for a in rest}

        def word() -> str:
            above = [p for p, k in keys.items() if family.differs(k)
                     and family.comparisons[k].diff > 0]
            below = [p for p in keys if p not in above]
            findings["above_baseline_unconverged"] = above
            s = []
            if above:
                s.append(f"{join(above)} {'is' if len(above) == 1 else 'are'} above it "
                         f"{noise_words(results, family)} without converging")
            if below:
                s.append(f"{join(below)} {'is' if len(below) == 1 else 'are'} not above it "
                         "beyond noise: not learned")
            return "Of the encodings that did not converge, " + "; ".join(s) + "."

        return parts + [word]

    def _past(self, results: dict[str, Any], family: Family, findings: dict[str, Any],
              read: list[str], lens: list[int], kinds: dict[int, Any]) -> list[Part]:
        aggs = {a["pos"]: a for a in results["aggregates"]}
        L = results["study"]["block_size"]
        parts: list[Part] = []
        for n in lens:
            k = kinds[n]
            where = (f"length {n} ({k['tokens']} tokens; longest dependency {k['dependency']} "
                     f"{'> L' if k['kind'] == DEP else '<= L'}: {k['kind']})")
            scores = sorted(((p, _acc_at(aggs[p], n)) for p in read
                             if _acc_at(aggs[p], n) is not None), key=lambda x: -x[1])
            if not scores:
                continue
            if all(v == 0 for _, v in scores):
                parts.append(f"At {where} every converged encoding scores 0.")
                continue
            parts.append(rank(results, family, f"acc@{n}", scores,
                              lambda p, n=n: acc_items(results, p, n), ".2f",
                              f"At {where}, accuracy"))
            if k["kind"] == DEP and n_seeds(results) > 1:
                parts.append(self._uses_context(results, family, findings, scores, n, L))
        return parts

    def _uses_context(self, results: dict[str, Any], family: Family, findings: dict[str, Any],
                      scores: list[tuple[str, float]], n: int, L: int) -> Part:
        keys = {p: family.add(f"context@{n}:{p}", acc_items(results, p, n),
                              baseline_items(results, n)).key for p, v in scores if v > 0}

        def word() -> str:
            users = [p for p, k in keys.items() if family.differs(k)
                     and family.comparisons[k].diff > 0]
            findings.setdefault("uses_context_past_L", {})[str(n)] = users
            if not users:
                return (f"At length {n} no converged encoding beats the best input-blind "
                        f"baseline beyond noise with {n_seeds(results)} seeds, so this study "
                        "cannot say whether context past L is used there.")
            return (f"At length {n}, {join(users)} beat{'s' if len(users) == 1 else ''} the "
                    f"best input-blind baseline {noise_words(results, family)}: "
                    f"{'it answers' if len(users) == 1 else 'they answer'} from more than L = "
                    f"{L} tokens back.")

        return word

    # --- report ------------------------------------------------------------------------------
    def tables(self, results: dict[str, Any]) -> dict[str, Table]:
        return {"accuracy": _accuracy_table(results), "convergence": _convergence_table(results)}

    def sections(self, results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        return [("Exact-match accuracy by instance length",
                 "Mean over seeds ± std, or one seed's accuracy with its 95% Wilson interval. "
                 "Each column says what the length tests; * marks an encoding that did not "
                 "converge, whose numbers past L are not read.", ["accuracy", "accuracy.png"]),
                ("Convergence", "Steps until validation accuracy at the longest trained length "
                 "reached the criterion (sample efficiency).", ["convergence"])]

    def plots(self) -> dict[str, Any]:
        return {"accuracy.png": ("Exact-match accuracy against instance length, with the best "
                                 "input-blind baseline", plot_accuracy)}

    def definitions(self, results: dict[str, Any]) -> list[str]:
        return [
            ("Exact match: an instance is correct when greedy decoding reproduces its whole "
             "answer and the final '.' (checked in one teacher-forced pass). The 95% interval "
             "is Wilson's score interval for a proportion."),
            (f"Instance length is {self.task.length_is}; training draws lengths from 1 to the "
             "longest whose whole example fits in L tokens. Test and validation instances are "
             "held out: their prompts hash to a reserved residue that training never draws."),
            ("Kinds of length: in distribution (n up to the longest trained), sequence past L "
             "(the example is longer than L but every dependency an exact answer needs is at "
             "most L tokens back), dependency past L (an answer needs a token more than L "
             "tokens back). Only the last kind can show the use of context past L."),
            ("Baselines ignore the input: the best constant answer (chosen with hindsight on "
             "the same test instances) and any the task adds (recall: the most frequent value "
             "in the prompt, ignoring the key)."),
        ]

    def run_schema(self) -> dict[str, Any]:
        return {"task_accuracy": {
            "type": "object", "required": ["task", "max_train_length", "results"],
            "description": "algorithmic tasks only",
            "properties": {"results": {"type": "array", "items": _TASK_ROW}}}}

    def aggregate_schema(self) -> dict[str, Any]:
        row = {"type": "object", "required": ["length", "tokens", "dependency", "accuracy",
                                              "reason", "untrained"],
               "properties": {"accuracy": _STATS}}
        return {"accuracy": {"type": "array", "items": row},
                "converged": {"type": "integer", "description": "seeds that reached the "
                              "criterion"},
                "steps_to_criterion": _STATS, "val_accuracy": _STATS}

    def study_schema(self) -> dict[str, Any]:
        return {"max_train_length": _INT, "criterion": {"type": "number"},
                "length_kinds": {"type": "array", "items": {
                    "type": "object", "required": ["length", "tokens", "dependency", "kind"],
                    "properties": {"kind": {"enum": [IN, SEQ, DEP]}}}},
                "baselines": {"type": "object", "description": "per length: each input-blind "
                              "baseline's accuracy and per-instance hits on the test instances"}}


__all__ = ["TaskObjective", "steps_to", "IN", "SEQ", "DEP"]
