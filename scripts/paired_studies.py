"""Compare two studies that differ in one setting (for example --random-positions), run by
run: the same objective, encodings and evaluation items, paired by seed (the seeds both
studies ran) and by item. Tasks: accuracy per held-out instance at every length past the
trained ones. Language modelling: the mean loss of every scored window at every length (the
same targets in both; lower is better). Uses the study's own test (hierarchical bootstrap
error, Student's t) and Holm over every (encoding, length) compared.

    python scripts/paired_studies.py runs/passkey-rp runs/passkey
    python scripts/paired_studies.py runs/lm-rp runs/lm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from minigpt.study.registry import get_objective
from minigpt.study.stats import Family, Items


def items(results: dict, pos: str, n: int, seeds: list[int]) -> Items | None:
    """Per seed (in seed order, so the two studies pair up), the items the study's objective
    scores for `pos` at length n; None where a run has none (learned past L)."""
    runs = sorted((r for r in results["runs"] if r["pos"] == pos and r["seed"] in seeds),
                  key=lambda r: r["seed"])
    got = get_objective(results["study"]["task"]).score_items({**results, "runs": runs}, pos, n)
    return None if any(len(s) == 0 for s in got.seeds) else got


def main(a_dir: str, b_dir: str) -> None:
    a, b = (json.loads((Path(d) / "results.json").read_text()) for d in (a_dir, b_dir))
    sa, sb = a["study"], b["study"]
    seeds = sorted(set(sa["seeds"]) & set(sb["seeds"]))
    if sa["task"] != sb["task"] or sa["lengths"] != sb["lengths"] or len(seeds) < 2:
        sys.exit("the two studies must have the same objective and lengths, and 2+ seeds in "
                 "common")
    first = sa.get("max_train_length", sa["block_size"] - 1)  # lm: L itself is compared too
    family = Family()
    encodings = [p for p in sa["encodings"] if p in sb["encodings"]]
    for pos in encodings:
        for n in (n for n in sa["lengths"] if n > first):
            ia, ib = items(a, pos, n, seeds), items(b, pos, n, seeds)
            if ia is not None and ib is not None:
                family.add(f"{pos}@{n}", ia, ib)
    family.resolve()
    what = "accuracy" if sa["task"] != "lm" else "mean loss (nats; lower is better)"
    print(f"{a_dir} minus {b_dir}: {what} difference, 95% interval, Holm-adjusted p "
          f"({len(family.comparisons)} comparisons, seeds {seeds})")
    for c in family.comparisons.values():
        mark = "differs" if c.differs else "within noise"
        print(f"  {c.key:14s} {c.diff:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]  p_holm {c.p_holm:.3f}  "
              f"{mark}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
