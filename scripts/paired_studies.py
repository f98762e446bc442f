"""Compare two task studies that differ in one setting (for example --random-positions), run
by run: the same encodings, seeds and test instances, so every accuracy is paired by seed and
instance. Uses the study's own test (hierarchical bootstrap error, Student's t) and Holm over
every (encoding, length) past the trained lengths.

    python scripts/paired_studies.py runs/passkey-rp runs/passkey
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from minigpt.study.stats import Family, Items


def hits(results: dict, pos: str, n: int) -> Items:
    per_seed = []
    for r in sorted((r for r in results["runs"] if r["pos"] == pos), key=lambda r: r["seed"]):
        row = next(x for x in r["task_accuracy"]["results"] if x["length"] == n)
        per_seed.append(row["per_instance"])
    return Items.of(per_seed)


def main(a_dir: str, b_dir: str) -> None:
    a, b = (json.loads((Path(d) / "results.json").read_text()) for d in (a_dir, b_dir))
    if a["study"]["seeds"] != b["study"]["seeds"] or a["study"]["lengths"] != b["study"]["lengths"]:
        sys.exit("the two studies must have the same seeds and lengths")
    nmax = a["study"]["max_train_length"]
    family = Family()
    encodings = [p for p in a["study"]["encodings"] if p in b["study"]["encodings"]]
    for pos in encodings:
        for n in (n for n in a["study"]["lengths"] if n > nmax):
            family.add(f"{pos}@{n}", hits(a, pos, n), hits(b, pos, n))
    family.resolve()
    print(f"{a_dir} minus {b_dir}: accuracy difference, 95% interval, Holm-adjusted p "
          f"({len(family.comparisons)} comparisons)")
    for c in family.comparisons.values():
        mark = "differs" if c.differs else "within noise"
        print(f"  {c.key:14s} {c.diff:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]  p_holm {c.p_holm:.3f}  "
              f"{mark}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
