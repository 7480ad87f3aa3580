"""Alignment scores of DAKR's terms: CNA feature pairs, per-class scoring and a feature queue (METHOD.md).

Rows of ``x`` ``(n, p)`` and ``y`` ``(n, q)`` are paired samples; ``groups`` ``(n,)`` assigns
each pair to a class (all zeros when pairs are not grouped).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dakr.config import ContinualConfig
from dakr.continual.blocks import reduce_features, sample_positions
from dakr.continual.hsic import MIN_SAMPLES, normalized_hsic


def cna_vectors(current_maps: Tensor, previous_maps: Tensor, continual: ContinualConfig) -> tuple[Tensor, Tensor]:
    """Paired CNA rows of the current and previous networks' maps ``(B, C, *S)`` for ``continual.cna_reduction``."""
    if continual.cna_reduction == "spatial":
        return sample_positions(current_maps, previous_maps, continual.cna_spatial_samples)
    return (
        reduce_features(current_maps, continual.cna_reduction, continual.cna_pool_size),
        reduce_features(previous_maps, continual.cna_reduction, continual.cna_pool_size),
    )


def grouped_alignment(
    x: Tensor, y: Tensor, groups: Tensor, kernel: str, estimator: str, min_pairs: int = MIN_SAMPLES
) -> Tensor | None:
    """Mean nHSIC over the groups with at least ``min_pairs`` pairs (``None`` when no group has enough)."""
    scores = []
    for group in torch.unique(groups):
        rows = groups == group
        if int(rows.sum()) >= max(min_pairs, MIN_SAMPLES):
            score = normalized_hsic(x[rows], y[rows], kernel, estimator)
            if score is not None:
                scores.append(score)
    return torch.stack(scores).mean() if scores else None


def within_group_shuffle(groups: Tensor) -> Tensor:
    """A permutation of ``range(n)`` that moves every row to another row of its group (cyclic shift by one).

    Rows alone in their group stay in place.
    """
    permutation = torch.arange(groups.shape[0], device=groups.device)
    for group in torch.unique(groups):
        rows = (groups == group).nonzero().flatten()
        permutation[rows] = rows.roll(1)
    return permutation


class PairQueue:
    """The latest ``size`` pairs of each group, kept without gradient and added to later HSIC batches.

    :meth:`join` returns the new pairs (with gradient) followed by the stored ones, then stores the
    new pairs, dropping each group's oldest beyond ``size``. ``size=0`` disables the queue.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pairs: dict[int, tuple[Tensor, Tensor]] = {}

    def clear(self) -> None:
        """Forget every stored pair (the features of another stage or network are not comparable)."""
        self._pairs.clear()

    def join(self, x: Tensor, y: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, groups)`` extended by the stored pairs; the new pairs are stored afterwards."""
        if self.size == 0:
            return x, y, groups
        x, y = x.float(), y.float()
        stored = [(px, py, torch.full((px.shape[0],), g, dtype=groups.dtype, device=groups.device))
                  for g, (px, py) in self._pairs.items() if px.shape[1:] == x.shape[1:] and py.shape[1:] == y.shape[1:]]
        joined = (
            torch.cat([x, *(s[0] for s in stored)]),
            torch.cat([y, *(s[1] for s in stored)]),
            torch.cat([groups, *(s[2] for s in stored)]),
        )
        for group in torch.unique(groups).tolist():
            rows = groups == group
            old_x, old_y = self._pairs.get(group, (x[:0].detach(), y[:0].detach()))
            self._pairs[group] = (
                torch.cat([x[rows].detach(), old_x])[: self.size],
                torch.cat([y[rows].detach(), old_y])[: self.size],
            )
        return joined
