"""The paired bootstrap behind the gate: how sure are we about a mean per-case change?

For one site the gate has, per audit case, the change ``new - parent`` of a score (Dice points).
Resampling the cases with replacement many times and taking the mean each time shows how much
the mean could move had other cases of the same site been drawn. The ``alpha`` quantile of those
means is the one-sided lower confidence bound at level ``1 - alpha`` (percentile bootstrap); the
``1 - alpha`` quantile is the matching upper end, so ``[lower, upper]`` is a two-sided
``1 - 2 alpha`` interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedInterval:
    """Mean paired change with its bootstrap interval; bounds are NaN with fewer than 2 cases."""

    n: int
    mean: float
    lower: float
    upper: float
    confidence: float

    @property
    def half_width(self) -> float:
        """Distance from the mean down to the lower bound; ``inf`` when it cannot be estimated."""
        return math.inf if math.isnan(self.lower) else self.mean - self.lower


def paired_bootstrap(changes: Sequence[float], *, confidence: float, samples: int, seed: int) -> PairedInterval:
    """Mean of ``changes`` with its one-sided lower bound at ``confidence`` (seeded percentile bootstrap).

    One case says nothing about the spread, so with fewer than two cases the bounds are NaN.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0.5 and 1, got {confidence}")
    if samples < 100:
        raise ValueError(f"bootstrap samples must be at least 100, got {samples}")
    values = np.asarray(list(changes), dtype=float)
    if values.size == 0:
        return PairedInterval(0, math.nan, math.nan, math.nan, confidence)
    mean = float(values.mean())
    if values.size < 2:
        return PairedInterval(1, mean, math.nan, math.nan, confidence)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    alpha = 1.0 - confidence
    lower, upper = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedInterval(int(values.size), mean, float(lower), float(upper), confidence)
