"""Sample spread and the paired bootstrap on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dakr.evaluation.statistics import matrices_from_cases, paired_bootstrap, sample_std


def test_sample_std_uses_ddof_one() -> None:
    assert sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))
    assert sample_std([5.0]) is None


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    rng = np.random.default_rng(0)
    b = [rng.uniform(40, 80, size=(3, 2, 4)) for _ in range(2)]  # 3 seeds, 2 stages, 4 cases per site
    a = [x + 2.0 for x in b]
    result = paired_bootstrap(a, b, resamples=200)
    assert result["acc"] == pytest.approx([2.0, 2.0, 2.0])
    assert result["bwt"] == pytest.approx([0.0, 0.0, 0.0])  # every stage shifted alike


def test_interval_matches_the_normal_theory_interval_of_a_mean() -> None:
    # One seed, one site, one stage: ACC is the mean over 400 cases of a per-case Dice,
    # so the difference's 95 % interval is about mean ± 1.96 sd / sqrt(n).
    rng = np.random.default_rng(1)
    n = 400
    difference = rng.normal(1.0, 2.0, size=n)
    b = [rng.uniform(40, 80, size=(1, 1, n))]
    a = [b[0] + difference.reshape(1, 1, n)]
    low, mean, high = paired_bootstrap(a, b, resamples=4000, seed=3)["acc"]
    half_width = 1.96 * difference.std(ddof=1) / math.sqrt(n)
    assert mean == pytest.approx(difference.mean())
    assert low == pytest.approx(mean - half_width, abs=0.05)
    assert high == pytest.approx(mean + half_width, abs=0.05)
    assert paired_bootstrap(a, b, resamples=500, seed=7)["acc"] == paired_bootstrap(a, b, resamples=500, seed=7)["acc"]


def test_seed_resampling_widens_the_interval_when_seeds_disagree() -> None:
    b = [np.full((4, 1, 3), 50.0)]
    a = [b[0] + np.array([0.0, 1.0, 2.0, 9.0]).reshape(4, 1, 1)]  # the gain depends on the seed only
    low, mean, high = paired_bootstrap(a, b, resamples=2000)["acc"]
    assert mean == pytest.approx(3.0) and low < 1.5 and high > 5.0


def test_matrices_average_the_chosen_cases_and_skip_nan() -> None:
    site = np.array([[[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]]])  # 1 seed, 2 stages, 3 cases
    assert matrices_from_cases([site])[0, :, 0] == pytest.approx([2.0, 5.0])
    assert matrices_from_cases([site], cases=[np.array([2, 2])])[0, :, 0] == pytest.approx([3.0, 6.0])


def test_mismatched_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap([np.zeros((2, 1, 3))], [np.zeros((3, 1, 3))])
