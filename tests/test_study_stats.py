"""The study's noise rules on synthetic data where the answer is known: the hierarchical
bootstrap with a t reference, Holm's correction, and why one seed never ranks."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.study.stats import (Family, Items, compare_items, hierarchical_bootstrap, holm,
                                 iid_bootstrap, p_value, t_cdf, t_quantile)


def _null_study(rng: np.random.Generator, seeds: int, items: int = 200
                ) -> tuple[Items, Items]:
    """Two encodings with no true difference: each (encoding, seed) draws its own training
    offset (sd 1), and items add evaluation noise (sd 0.5) around it."""
    a = [rng.normal(0, 1) + rng.normal(0, 0.5, items) for _ in range(seeds)]
    b = [rng.normal(0, 1) + rng.normal(0, 0.5, items) for _ in range(seeds)]
    return Items.of(a), Items.of(b)


def test_student_t_matches_its_tables() -> None:
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert t_cdf(1.812, 10) == pytest.approx(0.95, abs=1e-3)
    assert t_cdf(0.0, 3) == pytest.approx(0.5)


def test_no_difference_is_called_at_about_the_promised_rate() -> None:
    """With no true difference, our test calls one in about 5 % of studies at 3 seeds, where
    a plain hierarchical-bootstrap percentile p-value calls one in about 30 %."""
    rng = np.random.default_rng(0)
    ours = naive = 0
    reps = 120
    for r in range(reps):
        a, b = _null_study(rng, 3)
        ours += compare_items("x", a, b).p < 0.05
        diffs = [x - y for x, y in zip(a.seeds, b.seeds)]
        naive += p_value(hierarchical_bootstrap(diffs, n_boot=1000, seed=r)) < 0.05
    assert ours / reps < 0.12
    assert naive / reps > 0.2


def test_a_real_difference_is_found_and_one_seed_never_ranks() -> None:
    rng = np.random.default_rng(1)
    a = Items.of([rng.normal(0, 0.2, 300) + s for s in (0.0, 0.1, -0.1, 0.05, -0.05)])
    b = Items.of([x + 1.0 + rng.normal(0, 0.05) for x in a.seeds])
    c = compare_items("a-b", a, b)
    assert c.p < 0.001 and c.hi < 0 and c.diff == pytest.approx(-1.0, abs=0.1)
    one = compare_items("a-b", Items.of(a.seeds[:1]), Items.of(b.seeds[:1]))
    assert one.p is None and one.lo is None  # one seed: no p-value, no ranking


def test_one_seed_bootstrap_would_wrongly_call_a_difference() -> None:
    """One trained model per encoding: the two differ by their training offsets only, but an
    i.i.d. bootstrap over one seed's 400 evaluation items is sure they differ; over 5 seeds
    the hierarchical test sees the offsets and does not call it."""
    rng = np.random.default_rng(7)
    a, b = _null_study(rng, 5, items=400)
    d0 = a.seeds[0] - b.seeds[0]
    boot = iid_bootstrap(d0)
    assert abs(d0.mean()) > 0.3 and p_value(boot) < 0.01  # the one-seed verdict: "differs"
    c = compare_items("a-b", a, b)
    assert c.p > 0.05  # the seed-aware verdict: within noise


def test_blocks_are_resampled_whole() -> None:
    """Correlated neighbours: blocks of 10 identical items carry the information of one item
    each, so resampling blocks gives a wider spread than resampling items."""
    rng = np.random.default_rng(2)
    d = [np.repeat(rng.normal(0, 1, 20), 10) for _ in range(3)]
    wide = hierarchical_bootstrap(d, block=10, n_boot=2000).std()
    narrow = hierarchical_bootstrap(d, block=1, n_boot=2000).std()
    assert wide > narrow


def test_holm_on_known_p_values() -> None:
    """Holm (1979): sorted p-values compared with alpha/(m - rank); adjusted p-values are
    monotone. The classic example: 0.01, 0.04, 0.03, 0.005 at alpha 0.05."""
    adj, reject = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject == [True, False, False, True]
    assert holm([]) == ([], [])
    # a family: twenty null comparisons at p = 0.02 each are all withdrawn together
    fam = Family()
    rng = np.random.default_rng(3)
    for k in range(3):
        a, b = _null_study(rng, 4)
        fam.add(f"null{k}", a, b)
    a = Items.of([rng.normal(0, 0.1, 100) for _ in range(4)])
    fam.add("real", a, Items.of([x + 2.0 for x in a.seeds]))
    fam.resolve()
    assert fam.differs("real")
    listed = {c["key"]: c for c in fam.as_list()}
    assert all(c["p_holm"] >= c["p"] for c in listed.values())
