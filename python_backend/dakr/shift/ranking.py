"""Which unlabelled cases of a new site to label first.

Each candidate gets two numbers from the active model: its uncertainty (mean normalised
softmax entropy over the predicted foreground) and its novelty (standardised feature distance
to the nearest case already labelled: the known sites' training cases, and the candidates
ranked before it). Cases are picked greedily by ``w · uncertainty + (1 - w) · novelty``, both
scaled to [0, 1] over the candidates, so the order favours cases the model is unsure about and
that cover parts of feature space no labelled case covers (a k-center / core-set step).
Ties are broken by a seeded shuffle, so a seed gives one order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.shift.distances import standardised_distance
from dakr.shift.reference import analyse_file, load_reference
from dakr.store import Store, StoreError

#: Default weight of uncertainty against novelty.
UNCERTAINTY_WEIGHT = 0.5


@dataclass
class RankedImage:
    """One candidate in labelling order (rank 1 first) with the reason for its place."""

    rank: int
    path: str
    uncertainty: float
    novelty: float
    score: float
    reason: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def greedy_order(
    embeddings: np.ndarray, uncertainty: np.ndarray, labelled: np.ndarray, *, weight: float = UNCERTAINTY_WEIGHT, seed: int = 0
) -> list[tuple[int, float, float]]:
    """Labelling order of candidates as ``(index, novelty, score)``; embeddings already standardised.

    ``embeddings`` (n, d) candidates, ``uncertainty`` (n,), ``labelled`` (m, d) cases already
    labelled (m may be 0). Novelty of a candidate is its RMS distance to the nearest labelled or
    already-picked case.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"uncertainty weight {weight}: use a value between 0 and 1")
    n = len(embeddings)
    ones = np.ones(embeddings.shape[1])
    nearest = np.full(n, np.inf)
    for point in labelled:
        nearest = np.minimum(nearest, standardised_distance(embeddings, point, ones))
    if not len(labelled):
        nearest = standardised_distance(embeddings, embeddings.mean(axis=0), ones)
    u_span = np.ptp(uncertainty) or 1.0
    u_norm = (uncertainty - uncertainty.min()) / u_span
    novelty_scale = float(nearest.max()) or 1.0
    tie_break = np.random.default_rng(seed).permutation(n) * 1e-9
    remaining = list(range(n))
    order = []
    while remaining:
        scores = {i: weight * u_norm[i] + (1.0 - weight) * nearest[i] / novelty_scale + tie_break[i] for i in remaining}
        pick = max(remaining, key=scores.__getitem__)
        order.append((pick, float(nearest[pick]), float(scores[pick])))
        remaining.remove(pick)
        nearest = np.minimum(nearest, standardised_distance(embeddings, embeddings[pick], ones))
    return order


def rank_images(
    store: Store,
    paths: list[Path],
    *,
    weight: float = UNCERTAINTY_WEIGHT,
    seed: int = 0,
    device: torch.device | None = None,
    progress: ProgressCallback = null_progress,
) -> list[RankedImage]:
    """Rank unlabelled images for labelling with the active model; see the module docstring."""
    from dakr.inference import default_device
    from dakr.pipeline import load_version_model, require_active_version

    if not paths:
        raise StoreError("no images to rank. Fix: give a folder with the new site's unlabelled images")
    active = require_active_version(store)
    device = device or default_device()
    reference = load_reference(store, active.id, device=device, progress=progress)
    model, config, _ = load_version_model(store, active.id, device)
    embeddings, uncertainty = [], []
    for index, path in enumerate(paths, start=1):
        analysis = analyse_file(model, path, config, device)
        embeddings.append(analysis.embedding / reference.scale)
        uncertainty.append(analysis.uncertainty)
        progress(ProgressEvent(stage="rank", step=index, total=len(paths), message=f"analysing {Path(path).name}"))
    labelled = np.concatenate([reference.embeddings[s] for s in reference.sites]) / reference.scale
    u = np.asarray(uncertainty)
    order = greedy_order(np.stack(embeddings), u, labelled, weight=weight, seed=seed)
    u_rank = {i: r for r, i in enumerate(np.argsort(-u, kind="stable"), start=1)}
    return [
        RankedImage(
            rank=rank,
            path=str(paths[i]),
            uncertainty=float(u[i]),
            novelty=novelty,
            score=score,
            reason=(
                f"uncertainty {u[i]:.3f} ({_ordinal(u_rank[i])} highest of {len(paths)}); "
                f"feature distance {novelty:.2f} to the nearest labelled or earlier-ranked case"
            ),
        )
        for rank, (i, novelty, score) in enumerate(order, start=1)
    ]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
