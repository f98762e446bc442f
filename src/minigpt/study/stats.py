"""The study's noise rules: paired comparisons over seeds *and* items, and the family of
comparisons one summary makes held to a 5 % family-wise error rate.

Why two levels. A bootstrap over the evaluation items (windows, instances) of one trained
model sees evaluation sampling only: two runs of the same recipe with other seeds (or the same
seed with bf16 sums in another order) differ by far more than that. So a ranking needs seeds,
and the test resamples seeds first, then items within each drawn seed (the hierarchical or
two-stage bootstrap, Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007). Comparisons are
paired: the same seed means the same training batches and initial values for every encoding,
and the same items are scored for every model.

Why a t reference. With few seeds a percentile bootstrap is far too sure of itself: it
resamples 2-5 seed values as if they were the population, so the spread it sees is too
small and its tails are normal where they should be Student's. Measured on synthetic data
with no true difference (tests/test_study_stats.py), the plain hierarchical-bootstrap p < 0.05
fires 43 % / 30 % / 11 % of the time at 2 / 3 / 5 seeds. So the bootstrap only estimates the
standard error of the mean difference (seed and item noise together, times sqrt(k/(k-1))
for the k seeds it resampled), and the p-value and interval come from Student's t with k - 1
degrees of freedom: 4 % / 7 % / 4 % false positives on the same data.

Why Holm. A summary makes many comparisons (every pair it ranks, every length); each at 5 %
would make some false claim likely. Holm's step-down method (Holm 1979) keeps the chance of any
false claim in the family at or below alpha without assuming independence.

With one seed nothing is ranked: `compare_items` then returns no p-value at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..evaluation import mean_std, wilson_interval  # noqa: F401  (the study's other rules)

ALPHA = 0.05
N_BOOT = 4000


@dataclass
class Items:
    """One number's evidence: per seed, the values of its items, grouped in blocks that are
    resampled whole (neighbouring LM windows are correlated; a task's instances are blocks of
    one). `seeds[k]` holds seed k's item values; `block` is the items per block."""

    seeds: list[np.ndarray]
    block: int = 1

    @classmethod
    def of(cls, per_seed: Sequence[Sequence[float]], block: int = 1) -> "Items":
        return cls([np.asarray(v, dtype=np.float64) for v in per_seed], max(1, int(block)))

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def mean(self) -> float:
        return float(np.mean([s.mean() for s in self.seeds]))


def _block_means(d: np.ndarray, block: int) -> np.ndarray:
    """Means of consecutive blocks of `block` items (a last partial block is its own)."""
    if block <= 1:
        return d
    edges = range(0, len(d), block)
    return np.array([d[i: i + block].mean() for i in edges])


def hierarchical_bootstrap(diffs: Sequence[np.ndarray], block: int = 1, *, n_boot: int = N_BOOT,
                           seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean paired difference: draw seeds with replacement, then
    blocks of items with replacement within each drawn seed; returns n_boot means."""
    rng = np.random.default_rng(seed)
    per_seed = [_block_means(np.asarray(d, dtype=np.float64), block) for d in diffs]
    k = len(per_seed)
    picks = rng.integers(0, k, size=(n_boot, k))  # the seeds drawn for each replicate
    total = np.zeros(n_boot)
    for slot in range(k):  # every slot of every replicate draws its own items
        for s, x in enumerate(per_seed):
            rows = np.flatnonzero(picks[:, slot] == s)
            if len(rows):
                total[rows] += x[rng.integers(0, len(x), size=(len(rows), len(x)))].mean(1)
    return total / k


def iid_bootstrap(d: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of a mean over i.i.d. items (one seed's evaluation noise only)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(d, dtype=np.float64)
    return d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function (numerical integral of its density; no scipy)."""
    import math

    x = np.linspace(0.0, abs(t), 4001)
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    area = float(np.trapezoid(c * (1 + x * x / df) ** (-(df + 1) / 2), x))
    return 0.5 + area if t >= 0 else 0.5 - area


def t_quantile(q: float, df: int) -> float:
    """The t value below which a share q of Student's t with df degrees of freedom lies."""
    lo, hi = -1e3, 1e3
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def p_value(boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the mean difference is 0': twice the smaller tail share
    on either side of 0 (at least 1/n_boot)."""
    lo = float(np.mean(boot <= 0))
    hi = float(np.mean(boot >= 0))
    return min(1.0, max(2 * min(lo, hi), 1.0 / len(boot)))


@dataclass
class Comparison:
    """a minus b on paired items: the mean difference, its 95 % interval and p-value (None with
    one seed: no ranking), and after `holm` whether it is called a difference."""

    key: str
    diff: float
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    p_holm: float | None = None
    differs: bool = False

    def as_dict(self) -> dict:
        return {"key": self.key, "diff": self.diff, "lo": self.lo, "hi": self.hi, "p": self.p,
                "p_holm": self.p_holm, "differs": self.differs}


def compare_items(key: str, a: Items, b: Items) -> Comparison:
    """Paired a - b over the seeds both have and the items of each: with two or more seeds,
    the hierarchical bootstrap's standard error against Student's t with k - 1 degrees of
    freedom; with one seed only the difference (never a p-value)."""
    k = min(a.n_seeds, b.n_seeds)
    diffs = []
    for s in range(k):
        n = min(len(a.seeds[s]), len(b.seeds[s]))
        diffs.append(a.seeds[s][:n] - b.seeds[s][:n])
    diff = float(np.mean([d.mean() for d in diffs])) if diffs else 0.0
    if k < 2 or any(len(d) == 0 for d in diffs):
        return Comparison(key, diff)
    boot = hierarchical_bootstrap(diffs, a.block)
    se = float(boot.std(ddof=1)) * (k / (k - 1)) ** 0.5
    if se == 0.0:
        return Comparison(key, diff, diff, diff, 1.0 if diff == 0 else 0.0)
    half = t_quantile(0.975, k - 1) * se
    p = 2 * (1 - t_cdf(abs(diff) / se, k - 1))
    return Comparison(key, diff, diff - half, diff + half, min(1.0, max(p, 0.0)))


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], list[bool]]:
    """Holm-Bonferroni: adjusted p-values (monotone step-down) and which hypotheses are
    rejected at family-wise error rate alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted, [p <= alpha for p in adjusted]


@dataclass
class Family:
    """The comparisons one summary makes: register them all, then `resolve` applies Holm over
    the ones that have a p-value; a comparison with none (one seed) never differs."""

    comparisons: dict[str, Comparison] = field(default_factory=dict)
    alpha: float = ALPHA

    def add(self, key: str, a: Items, b: Items) -> Comparison:
        if key not in self.comparisons:
            self.comparisons[key] = compare_items(key, a, b)
        return self.comparisons[key]

    def resolve(self) -> None:
        tested = [c for c in self.comparisons.values() if c.p is not None]
        adjusted, reject = holm([c.p for c in tested], self.alpha)
        for c, p, r in zip(tested, adjusted, reject):
            c.p_holm, c.differs = p, r

    def differs(self, key: str) -> bool:
        c = self.comparisons.get(key)
        return bool(c and c.differs)

    def as_list(self) -> list[dict]:
        return [c.as_dict() for c in self.comparisons.values()]
