"""Language modelling: strided perplexity by length on targets spread over the validation text,
the window baseline, and samples.

The window baseline. Any model can keep only its last L tokens: scored that way it gets its
perplexity at L at every length. So a flat curve past L means "as good as a window of L", not
"uses the extra context"; an encoding uses context past L only when it beats its own window
beyond noise. The table also names the best window of L over all encodings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..text import plural
from .lm_report import (_generation_table, _length_table, _ppl_at, plot_length_ppl,
                        plot_position_loss)
from .objective import Objective, Table
from .parsing import parse_lengths
from .stats import Family, Items, mean_std
from .summary import Part, join, mult, n_seeds, noise_words, rank

BLOCKS = 16  # evaluation spans spread over the validation text (resampled whole)
NEAR_UNIGRAM = 0.9  # ppl at L at least this fraction of the unigram baseline: not learned

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STATS = {"type": "object", "required": ["mean", "std", "n"],
          "properties": {"mean": {"type": ["number", "null"]}, "std": {"type": ["number", "null"]},
                         "n": {"type": "integer"}}}
_LENGTH_ROW = {
    "type": "object",
    "required": ["length", "multiple", "tokens", "loss", "ppl", "window_ppl", "reason",
                 "untrained", "window_loss"],
    "properties": {"length": {"type": "integer"}, "multiple": _NUM, "tokens": {"type": "integer"},
                   "loss": _NUM_OR_NULL, "ppl": _NUM_OR_NULL,
                   "window_ppl": {"type": ["number", "null"], "description": "the window "
                                  "baseline: the same targets with only the last L tokens of "
                                  "context (equals ppl at L for every length past L)"},
                   "reason": {"type": ["string", "null"]},
                   "untrained": {"type": ["string", "null"]},
                   "window_loss": {"type": "array", "items": _NUM,
                                   "description": "mean loss of each scored window, block "
                                   "after block"}}}


def default_prompt(data: Any) -> str:
    """The first line of the training text (always encodable), at most 40 characters."""
    head = data.tokenizer.decode(data.train[:400].tolist())
    line = next((s for s in head.splitlines() if s.strip()), head)
    prompt = line[:40]
    if not line.endswith("\n") and len(line) <= 40 and "\n" in head:
        prompt += "\n"
    return prompt


class LanguageModelling(Objective):
    name = "lm"
    scores_text = True
    title = "language modelling"
    score_name, score_fmt, higher_is_better = "perplexity", ".2f", False

    # --- settings and data -------------------------------------------------------------------
    def lengths(self, spec: str | None, L: int, preset_spec: str) -> list[int]:
        return parse_lengths(preset_spec if spec is None else spec, L)

    def eval_settings(self, study: Any) -> dict[str, Any]:
        return {"eval_tokens": study.eval_tokens, "eval_stride": study.eval_stride,
                "eval_blocks": BLOCKS}

    def data(self, study: Any, progress: bool) -> Any:
        from ..training import load_dataset

        return load_dataset(study.base, study.tokenizer_path(), verbose=progress)

    def prepare(self, study: Any, data: Any) -> None:
        from .. import evaluation

        self.spans = evaluation.eval_blocks(np.asarray(data.val), study.lengths,
                                            study.eval_stride, study.eval_tokens, blocks=BLOCKS)
        longest = max(study.lengths)
        targets = np.concatenate([evaluation.scored_targets(s, study.eval_stride, longest)
                                  for s in self.spans])
        self.n_targets = len(targets)
        self.unigram = evaluation.unigram_ppl(data.train, targets, data.tokenizer.vocab_size)
        self.prompt = study.base.train.sample_prompt or default_prompt(data)
        data.tokenizer.check_text(self.prompt)
        self.words = evaluation.training_vocabulary(data.tokenizer, data.train) \
            if study.base.train.sample_tokens else set()
        self.data_name = (study.base.train.data, study.base.train.tokenizer)

    def evaluate(self, model: Any, tok: Any, cfg: Any, study: Any) -> dict[str, Any]:
        from .. import evaluation

        lg = evaluation.length_generalization(model, self.spans, study.lengths, study.eval_stride)
        gen = []
        t = cfg.train
        for temp in (t.sample_temperatures if t.sample_tokens else []):
            text = evaluation.sample_windowed(model, tok, self.prompt, t.sampling(temp))
            gen.append({"temperature": temp, "text": text,
                        **evaluation.generation_metrics(text, self.words)})
        return {"length_generalization": lg, "generation": gen}

    def study_fields(self, study: Any) -> dict[str, Any]:
        return {"eval_span_tokens": self.n_targets, "eval_blocks": len(self.spans),
                "unigram_ppl": self.unigram, "prompt": self.prompt}

    def held_equal(self, study: Any, vocab: int) -> list[str]:
        t = study.base.train
        lines = [(f"Data and tokenizer: {t.data}, {t.tokenizer} tokenizer, vocabulary of "
                  f"{vocab}; the same train/validation split."),
                 (f"Evaluation tokens: the same {self.n_targets} validation targets at every "
                  f"length, in {plural(len(self.spans), 'block')} spread evenly over the "
                  f"validation text, scored with windows moved by a stride of "
                  f"{study.eval_stride} tokens that score their last {study.eval_stride}, so "
                  f"at length T every scored token has T - {study.eval_stride} to T - 1 tokens "
                  "of context.")]
        if t.sample_tokens:
            lines.append(
                f"Sampling: prompt {self.prompt!r}, temperatures "
                f"{', '.join(f'{x:g}' for x in t.sample_temperatures)}, {t.sample_tokens} new "
                "tokens, the run's seed; every model sees at most its last L tokens while "
                "sampling.")
        return lines

    # --- results -----------------------------------------------------------------------------
    def aggregate(self, rs: list[dict[str, Any]]) -> dict[str, Any]:
        from .records import col_stats

        rows = col_stats(rs, "length_generalization", ("ppl", "loss", "window_ppl"))
        curves = [r["length_generalization"]["position_loss"]["loss"] for r in rs]
        n = min(len(c) for c in curves)
        stats = [mean_std(c[p] for c in curves) for p in range(n)]
        return {"length_ppl": [{k: v for k, v in row.items() if k != "tokens"} for row in rows],
                "position_loss": {
                    "length": rs[0]["length_generalization"]["position_loss"]["length"],
                    "mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}}

    def summary(self, results: dict[str, Any], family: Family
                ) -> tuple[list[Part], dict[str, Any]]:
        study = results["study"]
        L, longest = study["block_size"], max(study["lengths"])
        findings: dict[str, Any] = {"block_size": L, "longest_length": longest}
        parts = self._at_L(results, family, findings)
        if longest <= L:
            return parts + ["No length past L was evaluated."], findings
        return parts + self._past_L(results, family, findings), findings

    def _at_L(self, results: dict[str, Any], family: Family, findings: dict[str, Any]
              ) -> list[Part]:
        study, L = results["study"], results["study"]["block_size"]
        at_L = sorted(((a["pos"], _ppl_at(a, L)) for a in results["aggregates"]
                       if _ppl_at(a, L) is not None), key=lambda x: x[1])
        findings["ppl_at_L"] = dict(at_L)
        over = f" (mean over {n_seeds(results)} seeds)" if n_seeds(results) > 1 else ""
        parts: list[Part] = [rank(results, family, f"ppl@{L}", at_L,
                                  lambda p: loss_items(results, p, L), ".2f",
                                  f"At the trained length L = {L}, validation perplexity{over}")]
        u = study.get("unigram_ppl")
        weak = [(p, v) for p, v in at_L if u and v >= NEAR_UNIGRAM * u]
        findings["near_unigram"] = [p for p, _ in weak]
        if weak:
            near = [f"{p} ({v:.2f})" for p, v in weak if v <= u]
            worse = [f"{p} ({v:.2f})" for p, v in weak if v > u]
            said = []
            if near:
                said.append(f"{join(near)} {'is' if len(near) == 1 else 'are'} close to")
            if worse:
                said.append(f"{join(worse)} {'is' if len(worse) == 1 else 'are'} worse than")
            parts.append(f"At L, {' and '.join(said)} the context-free unigram baseline (ppl "
                         f"{u:.2f}), so {'it has' if len(weak) == 1 else 'they have'} not learned "
                         "to use context within this budget and no length reading is made for "
                         f"{'it' if len(weak) == 1 else 'them'}.")
        return parts

    def _past_L(self, results: dict[str, Any], family: Family, findings: dict[str, Any]
                ) -> list[Part]:
        study, aggs = results["study"], results["aggregates"]
        L, longest = study["block_size"], max(study["lengths"])
        at, tag = mult(longest, L), f"window@{longest}"
        readable = [a for a in aggs if a["pos"] not in findings["near_unigram"]
                    and _ppl_at(a, L) is not None]
        ratios, keys = {}, {}
        for a in readable:
            far = _ppl_at(a, longest)
            if far is None:
                continue
            ratios[a["pos"]] = (far / _ppl_at(a, L), far)
            if n_seeds(results) > 1:
                keys[a["pos"]] = family.add(f"{tag}:{a['pos']}",
                                            loss_items(results, a["pos"], longest),
                                            loss_items(results, a["pos"], L)).key
        parts: list[Part] = [
            ("Any model can keep only its last L tokens, and scored that way it gets its "
             "perplexity at L at every length (its window baseline); an encoding uses context "
             "past L only where it beats its own window beyond noise.")] if ratios else []
        windows = sorted((p, _ppl_at(a, L)) for p, a in ((a["pos"], a) for a in readable))
        if windows:
            bp, bv = min(windows, key=lambda x: x[1])
            findings["best_window"] = {"pos": bp, "ppl": bv}
            parts.append(f"The best window of L here is {bp}'s ({bv:.2f}).")

        parts.append(lambda: self._verdicts(results, family, findings, ratios, keys, at))
        far = sorted(((p, v[1]) for p, v in ratios.items()), key=lambda x: x[1])
        if len(far) > 1:
            parts.append(rank(results, family, f"ppl@{longest}", far,
                              lambda p: loss_items(results, p, longest), ".2f",
                              f"At {at}, perplexity"))
        if far and windows and n_seeds(results) > 1:
            parts.append(self._beats_window(results, family, findings, far[0][0],
                                            min(windows, key=lambda x: x[1])[0], longest, at))
        return parts

    @staticmethod
    def _verdicts(results: dict[str, Any], family: Family, findings: dict[str, Any],
                  ratios: dict[str, tuple[float, float]], keys: dict[str, str], at: str) -> str:
        """Each readable encoding at the longest length against its own window of L."""
        groups: dict[str, list[str]] = {}
        past = {}
        for pos, (r, far) in sorted(ratios.items(), key=lambda kv: kv[1][0]):
            if pos not in keys:
                v = "not tested (one seed)"
            elif family.differs(keys[pos]):
                v = "uses context past L" if r < 1 else "worse than its own window"
            else:
                v = (f"within noise of its own window ({n_seeds(results)} seeds), so no "
                     "evidence of using the longer context")
            past[pos] = {"ratio": r, "ppl": far, "verdict": v}
            groups.setdefault(v, []).append(f"{pos} (x{r:.2f})")
        findings["past_L"] = past
        said = [f"{join(names)}: {v}" for v, names in groups.items()]
        stuck = [a["pos"] for a in results["aggregates"] if not a["extrapolates"]]
        findings["cannot_extrapolate"] = stuck
        whose = "their" if len(stuck) > 1 else "its"
        tail = (f"; {join(stuck)} cannot be evaluated past L ({whose} positions stop at L)"
                if stuck else "")
        if not said:
            return tail[2].upper() + tail[3:] + "." if tail else ""
        longest = max(results["study"]["lengths"])
        return (f"At {at} = {longest} tokens, perplexity divided by the own window's "
                f"(perplexity at L), on the same targets: {'; '.join(said)}{tail}.")

    @staticmethod
    def _beats_window(results: dict[str, Any], family: Family, findings: dict[str, Any],
                      best: str, window_pos: str, longest: int, at: str) -> Part:
        """Whether the best encoding at the longest length beats the best window of L."""
        L = results["study"]["block_size"]
        key = family.add(f"best@{longest}-bestwindow", loss_items(results, best, longest),
                         loss_items(results, window_pos, L)).key

        def word() -> str:
            differs, diff = family.differs(key), family.comparisons[key].diff
            findings["beats_best_window"] = differs and diff < 0
            if differs and diff < 0:
                return (f"{best} at {at} beats the best window of L "
                        f"{noise_words(results, family)}.")
            if differs:
                return (f"The best window of L ({window_pos} keeping its last L tokens) beats "
                        f"every encoding at {at}, the best of them {best} included, "
                        f"{noise_words(results, family)}.")
            return f"No encoding at {at} beats the best window of L beyond noise."

        return word

    def score_at(self, agg: dict[str, Any], length: int) -> dict[str, Any] | None:
        return next((row["ppl"] for row in agg["length_ppl"] if row["length"] == length
                     and row["ppl"]["mean"] is not None), None)

    def score_items(self, results: dict[str, Any], pos: str, length: int) -> Items:
        return loss_items(results, pos, length)

    reference_name = ("the window of L of the same weights (its perplexity at L; for a "
                      "zero-shot variant the rope run's, which needs no extension method)")

    def reference(self, results: dict[str, Any], pos: str, length: int
                  ) -> tuple[Items, float] | None:
        """The window of L of the same weights: a model's own perplexity at L (the rope
        run's for a zero-shot variant, whose window of L needs no extension method; its own
        for a fine-tuned one, which also trained on more tokens)."""
        L = results["study"]["block_size"]
        agg = next(a for a in results["aggregates"] if a["pos"] == pos)
        ext = agg.get("extension")
        src = ext["base"] if ext and not ext["finetune_steps"] else pos
        value = next((_ppl_at(a, L) for a in results["aggregates"] if a["pos"] == src), None)
        return None if value is None else (loss_items(results, src, L), value)

    # --- report ------------------------------------------------------------------------------
    def tables(self, results: dict[str, Any]) -> dict[str, Table]:
        return {"length": _length_table(results), "generation": _generation_table(results)}

    def sections(self, results: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        return [("Length generalization (validation perplexity at each evaluation length)",
                 "The same validation targets at every length, strided windows. Each "
                 "encoding's window baseline (only its last L tokens kept) is its value at L "
                 "at every length; the best window of L is shown as its own row.",
                 ["length", "length_ppl.png", "position_loss.png"]),
                ("Generation quality", "", ["generation"])]

    def plots(self) -> dict[str, Any]:
        return {"length_ppl.png": ("Validation perplexity against evaluation length (same "
                                   "tokens), with the best window of L", plot_length_ppl),
                "position_loss.png": ("Loss against position inside the window at the longest "
                                      "length", plot_position_loss)}

    def definitions(self, results: dict[str, Any]) -> list[str]:
        return [
            ("Perplexity = exp(mean cross-entropy in nats per token). Length generalization "
             "scores the same validation targets at every length with strided sliding windows: "
             "windows move by a stride s <= L/2 and score only their last s tokens, so at "
             "length T every scored token has T - s to T - 1 tokens of context (Press et al. "
             "2022). The targets lie in blocks spread evenly over the validation text; "
             "evaluation and sampling run in float32, whatever precision training used."),
            ("Window baseline: the same targets scored with only the last L tokens of each "
             "window (what any model gets by forgetting what is older than its trained "
             "length); it equals the perplexity at L at every length. An encoding uses context "
             "past L only when its perplexity at a longer length is below its own window beyond "
             f"noise. An encoding whose perplexity at L is at least {NEAR_UNIGRAM:g} x the "
             "unigram baseline (training-token frequencies, no context) has not learned to use "
             "context and gets no length reading."),
            ("Generation metrics are over the generated words only (prompt excluded): "
             "distinct-n = unique n-grams / all n-grams; repeated 4-grams = share of 4-gram "
             "occurrences that repeat an earlier one in the same sample; known words = share of "
             "generated words that occur in the training text."),
        ]

    def samples(self, results: dict[str, Any]) -> list[tuple[str, float, str]]:
        out = []
        for pos in results["study"]["encodings"]:
            run = next((r for r in results["runs"] if r["pos"] == pos), None)
            for g in (run or {}).get("generation", []):
                out.append((pos, g["temperature"], g["text"]))
        return out

    def run_schema(self) -> dict[str, Any]:
        return {"length_generalization": {
            "type": "object",
            "required": ["span_tokens", "stride", "blocks", "windows_per_block", "results",
                         "position_loss"],
            "description": "language modelling only",
            "properties": {
                "span_tokens": {"type": "integer"}, "stride": {"type": "integer"},
                "blocks": {"type": "integer", "description": "evaluation spans, spread over "
                           "the validation text"},
                "windows_per_block": {"type": "integer"},
                "results": {"type": "array", "items": _LENGTH_ROW},
                "position_loss": {"type": "object", "required": ["length", "loss"]}}}}

    def aggregate_schema(self) -> dict[str, Any]:
        row = {"type": "object", "required": ["length", "multiple", "ppl", "loss", "window_ppl",
                                              "reason", "untrained"],
               "properties": {"ppl": _STATS, "loss": _STATS, "window_ppl": _STATS}}
        return {"length_ppl": {"type": "array", "items": row},
                "position_loss": {"type": "object", "required": ["length", "mean", "std"]}}

    def study_schema(self) -> dict[str, Any]:
        return {"eval_span_tokens": {"type": "integer"}, "eval_blocks": {"type": "integer"},
                "unigram_ppl": {"type": "number", "description": "perplexity of a context-free "
                                "unigram model (training frequencies) on the targets"},
                "prompt": {"type": "string"}}



def loss_items(results: dict[str, Any], pos: str, length: int) -> Items:
    """Per seed, the window losses of `pos` at `length`, blocked as they were scored."""
    per_seed, block = [], 1
    for r in results["runs"]:
        if r["pos"] != pos:
            continue
        lg = r["length_generalization"]
        row = next((x for x in lg["results"] if x["length"] == length), None)
        per_seed.append(row["window_loss"] if row and row["loss"] is not None else [])
        block = lg.get("windows_per_block", 1)
    return Items.of(per_seed, block)


__all__ = ["LanguageModelling", "loss_items", "default_prompt"]
