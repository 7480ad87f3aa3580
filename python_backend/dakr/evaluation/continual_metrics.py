"""Continual-learning summaries of the accuracy matrix (METHOD.md, "Evaluation").

``R`` is a square ``(T, T)`` array: ``R[i, j]`` is the mean foreground Dice on the audit split of
site ``j`` after training stage ``i`` (both 0-based; METHOD.md writes them 1-based). NaN marks a
site that was not evaluated after a stage and is left out of every mean and maximum. With a single
stage (``T == 1``) there is no earlier site and no later stage, so BWT, forgetting and FWT are NaN
(FWT needs three sites);
a mean over no values is NaN as well.
"""

from __future__ import annotations

import math

import numpy as np


def acc(r: np.ndarray) -> float:
    """ACC = mean over all seen sites j of ``R[T-1, j]`` (Dice of the final model)."""
    r = _check_matrix(r)
    return _nanmean(r[-1])


def bwt(r: np.ndarray) -> float:
    """BWT = mean over j = 0..T-2 of ``R[T-1, j] - R[j, j]``; negative means forgetting."""
    r = _check_matrix(r)
    t = r.shape[0]
    return _nanmean(np.array([r[t - 1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(r: np.ndarray) -> float:
    """Forgetting = mean over j = 0..T-2 of ``max_{l = 0..T-2} R[l, j] - R[T-1, j]``.

    As in METHOD.md the maximum runs over every stage before the last, including stages before
    site j was trained on.
    """
    r = _check_matrix(r)
    t = r.shape[0]
    return _nanmean(np.array([_nanmax(r[: t - 1, j]) - r[t - 1, j] for j in range(t - 1)]))


def fwt(r: np.ndarray, b: np.ndarray) -> float:
    """FWT = mean over j = 2..T-1 of ``R[j-1, j] - b[j]`` (NaN with fewer than three sites).

    ``b`` has length T; ``b[j]`` is the zero-shot reference Dice on site j (METHOD.md: the
    stage-1 model's Dice, i.e. ``R[0, j]``; state the reference used in every report). The
    j = 1 term ``R[0, 1] - b[1]`` is left out: with that reference it is zero by construction.
    """
    r = _check_matrix(r)
    b = np.asarray(b, dtype=float)
    t = r.shape[0]
    if b.shape != (t,):
        raise ValueError(f"FWT reference b must have one value per site, shape ({t},), got {b.shape}")
    return _nanmean(np.array([r[j - 1, j] - b[j] for j in range(2, t)]))


def summarize(r: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """All four summaries: ``{"acc", "bwt", "forgetting", "fwt"}``."""
    return {"acc": acc(r), "bwt": bwt(r), "forgetting": forgetting(r), "fwt": fwt(r, b)}


def _check_matrix(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(
            f"accuracy matrix must be square (stages x sites) and non-empty, got shape {r.shape}; "
            "R[i, j] is the Dice on site j after stage i"
        )
    return r


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _nanmax(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else math.nan
