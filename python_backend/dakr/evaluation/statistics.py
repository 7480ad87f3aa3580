"""Spread and paired comparisons of benchmark results (METHOD.md, "Evaluation").

Per-case Dice of one strategy is held per site as an array ``(seeds, stages, cases)``: entry
``[s, i, c]`` is the mean foreground Dice on case ``c`` of that site after stage ``i`` with seed
``s`` (NaN where a case has no valid class). Two strategies are compared on the same seeds and
the same cases, so their difference is paired; its 95 % interval comes from a bootstrap that
resamples seeds and each site's cases with replacement, the same draw for both strategies.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from dakr.evaluation.continual_metrics import acc, bwt

#: The summaries compared between strategies, on R in Dice points.
PAIRED_METRICS: dict[str, Callable[[np.ndarray], float]] = {"acc": acc, "bwt": bwt}


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof = 1); ``None`` with fewer than two values."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else None


def matrices_from_cases(site_cases: Sequence[np.ndarray], seeds: np.ndarray | None = None, cases: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Accuracy matrices ``(seeds, stages, sites)``: per site the mean over (the chosen) cases."""
    seeds = np.arange(site_cases[0].shape[0]) if seeds is None else seeds
    cases = [np.arange(x.shape[2]) for x in site_cases] if cases is None else cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a site whose chosen cases are all NaN stays NaN
        columns = [np.nanmean(x[seeds][:, :, index], axis=2) for x, index in zip(site_cases, cases)]
    return np.stack(columns, axis=2)


def paired_bootstrap(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """``{metric: [low, mean, high]}`` of ``metric(a) − metric(b)`` for every :data:`PAIRED_METRICS`.

    ``mean`` is the observed difference of the seed means; ``low``/``high`` are the percentile
    bounds of the bootstrap distribution (seeds and each site's cases resampled jointly for both
    strategies). Seeded, so the same inputs give the same interval.
    """
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("paired strategies need the same seeds, sites, stages and cases")
    rng = np.random.default_rng(seed)
    n_seeds = a[0].shape[0]
    observed = _difference(a, b, None, None)
    draws = {name: np.empty(resamples) for name in PAIRED_METRICS}
    for k in range(resamples):
        seeds = rng.integers(0, n_seeds, n_seeds)
        cases = [rng.integers(0, x.shape[2], x.shape[2]) for x in a]
        for name, value in _difference(a, b, seeds, cases).items():
            draws[name][k] = value
    tail = 50.0 * (1.0 - confidence)
    result = {}
    for name, values in draws.items():
        finite = values[~np.isnan(values)]
        low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (math.nan, math.nan)
        result[name] = [float(low), observed[name], float(high)]
    return result


def _difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], seeds: np.ndarray | None, cases: Sequence[np.ndarray] | None) -> dict[str, float]:
    ra, rb = matrices_from_cases(a, seeds, cases), matrices_from_cases(b, seeds, cases)
    return {
        name: float(np.mean([metric(m) for m in ra]) - np.mean([metric(m) for m in rb])) for name, metric in PAIRED_METRICS.items()
    }
