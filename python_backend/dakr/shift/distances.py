"""Distances between case embeddings and sites: standardised distance to a site and kernel MMD.

Both work on embeddings divided by a per-feature scale (the pooled within-site standard
deviation), so no feature dominates by its units. The MMD uses the Gaussian kernel with the
median-heuristic bandwidth, as the HSIC alignment losses do.
"""

from __future__ import annotations

import numpy as np
import torch

from dakr.continual.hsic import gaussian_kernel, median_bandwidth

#: Fraction of the median feature scale below which a feature's scale is floored.
SCALE_FLOOR_FRACTION = 0.1


def within_site_scale(groups: list[np.ndarray]) -> np.ndarray:
    """Pooled within-group standard deviation per feature (ddof = 1 per group), floored.

    ``groups``: one (n_g, features) array per site, each with n_g >= 2. Features that barely
    vary are floored at :data:`SCALE_FLOOR_FRACTION` of the median scale, so they cannot turn
    rounding noise into a large distance.
    """
    squares = sum(((g - g.mean(axis=0)) ** 2).sum(axis=0) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    if dof < 1:
        raise ValueError("need at least two cases in one site to estimate the feature scale")
    scale = np.sqrt(squares / dof)
    floor = max(float(np.median(scale)) * SCALE_FLOOR_FRACTION, 1e-12)
    return np.maximum(scale, floor)


def standardised_distance(embeddings: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Root-mean-square standardised distance of each row of ``embeddings`` (n, d) to ``centre`` (d,)."""
    z = (np.atleast_2d(embeddings) - centre) / scale
    return np.sqrt((z**2).mean(axis=1))


def mmd_squared(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> float:
    """Unbiased squared MMD between samples ``x`` (n, d) and ``y`` (m, d), Gaussian kernel.

    Features are divided by ``scale``; the bandwidth is the median pairwise distance of the
    pooled sample. Needs n, m >= 2. Near 0 (and possibly slightly negative) for samples of one
    distribution, larger the more the distributions differ.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least two cases on each side, got {len(x)} and {len(y)}")
    pooled = torch.from_numpy(np.concatenate([x, y]) / scale)
    gram = gaussian_kernel(pooled, median_bandwidth(pooled)).numpy()
    n, m = len(x), len(y)
    k_xx, k_yy, k_xy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    within_x = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())
