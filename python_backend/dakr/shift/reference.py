"""The shift reference of a model version: what its known sites look like in feature space.

Built once per (version, set of known sites) and cached in the store's ``shift/`` folder:
- the embeddings of every training case of the sites the version was trained on (its lineage,
  purged sites excluded), their per-site means and the pooled within-site feature scale;
- the out-of-distribution threshold, calibrated on the known sites' *audit* cases only (never
  seen in training): the 99th percentile of their shift scores.

A case's shift score is its standardised distance to the nearest known site's mean; scores
above the threshold are beyond anything seen on the known sites' held-out cases.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dakr.config import ExperimentConfig
from dakr.data.io import read_image
from dakr.data.preprocessing import preprocess_image
from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.shift.distances import standardised_distance, within_site_scale
from dakr.shift.features import CaseAnalysis, analyse_array
from dakr.store import Store, StoreError
from dakr.store.files import load_npz, replace_npz

#: Percentile of the known sites' audit-case scores used as the out-of-distribution threshold.
THRESHOLD_PERCENTILE = 99.0
SHIFT_DIR = "shift"


@dataclass
class ShiftReference:
    """Known sites' training embeddings, their feature scale and the calibrated threshold."""

    version: int
    sites: list[str]
    embeddings: dict[str, np.ndarray]
    scale: np.ndarray
    threshold: float
    calibration_cases: list[tuple[str, str]]
    calibration_scores: np.ndarray

    def centre(self, site: str) -> np.ndarray:
        """Mean training embedding of a known site."""
        return self.embeddings[site].mean(axis=0)

    def distances(self, embedding: np.ndarray) -> dict[str, float]:
        """Standardised distance of one embedding to each known site's mean."""
        return {site: float(standardised_distance(embedding, self.centre(site), self.scale)[0]) for site in self.sites}

    def score(self, embedding: np.ndarray) -> tuple[float, str]:
        """(shift score, nearest known site) of one case embedding."""
        distances = self.distances(embedding)
        nearest = min(distances, key=distances.__getitem__)
        return distances[nearest], nearest


def analyse_file(model: nn.Module, path: str | Path, config: ExperimentConfig, device: torch.device) -> CaseAnalysis:
    """Read, preprocess and analyse one stored or uploaded volume."""
    array, _ = preprocess_image(read_image(path), config.preprocess)
    return analyse_array(model, array, config, device)


def known_sites(store: Store, version_id: int) -> list[str]:
    """Non-purged sites in the lineage of a version, in training order."""
    from dakr.pipeline import lineage

    stored = {s.name for s in store.sites() if not s.purged}
    chain = lineage(store, store.version(version_id))
    return [site for site in dict.fromkeys(v.site for v in chain) if site in stored]


def load_reference(
    store: Store, version_id: int, *, device: torch.device | None = None, progress: ProgressCallback = null_progress
) -> ShiftReference:
    """The cached reference of a version, built (and cached) on first use."""
    sites = known_sites(store, version_id)
    if not sites:
        raise StoreError(f"version {version_id} has no stored training site left to compare with (all purged)")
    path = store.path / SHIFT_DIR / f"v{version_id}-{_sites_key(sites)}.npz"
    if path.is_file():
        return _from_arrays(version_id, sites, load_npz(path))
    reference = build_reference(store, version_id, sites, device=device, progress=progress)
    path.parent.mkdir(exist_ok=True)
    replace_npz(path, _to_arrays(reference))
    return reference


def build_reference(
    store: Store,
    version_id: int,
    sites: list[str],
    *,
    device: torch.device | None = None,
    progress: ProgressCallback = null_progress,
) -> ShiftReference:
    """Embed the known sites' training cases, then calibrate the threshold on their audit cases."""
    from dakr.inference import default_device
    from dakr.pipeline import load_version_model

    device = device or default_device()
    model, config, _ = load_version_model(store, version_id, device)
    train = [(s, c) for s in sites for c in store.cases(s, "train") if c.image_path]
    audit = [(s, c) for s in sites for c in store.cases(s, "audit") if c.image_path]
    total = len(train) + len(audit)
    embedded: dict[tuple[str, str], np.ndarray] = {}
    for index, (site, case) in enumerate(train + audit, start=1):
        embedded[(site, case.case_id)] = analyse_file(model, case.image_path, config, device).embedding
        progress(ProgressEvent(stage="shift", step=index, total=total, message=f"embedding {site}/{case.case_id}"))
    embeddings = {s: np.stack([embedded[(s, c.case_id)] for site, c in train if site == s]) for s in sites}
    usable = [group for group in embeddings.values() if len(group) >= 2]
    if not usable:
        raise StoreError("the shift check needs a known site with at least two training cases")
    scale = within_site_scale(usable)
    partial = ShiftReference(version_id, sites, embeddings, scale, float("nan"), [], np.zeros(0))
    calibration = [(s, c.case_id) for s, c in audit]
    scores = np.array([partial.score(embedded[key])[0] for key in calibration])
    threshold = float(np.percentile(scores, THRESHOLD_PERCENTILE, method="higher")) if len(scores) else float("inf")
    return ShiftReference(version_id, sites, embeddings, scale, threshold, calibration, scores)


def _sites_key(sites: list[str]) -> str:
    return hashlib.sha256(json.dumps(sites).encode()).hexdigest()[:12]


def _to_arrays(reference: ShiftReference) -> dict[str, np.ndarray]:
    arrays = {f"site_{i}": reference.embeddings[site] for i, site in enumerate(reference.sites)}
    arrays.update(
        scale=reference.scale,
        threshold=np.array(reference.threshold),
        calibration_cases=np.array(json.dumps(reference.calibration_cases)),
        calibration_scores=reference.calibration_scores,
    )
    return arrays


def _from_arrays(version_id: int, sites: list[str], arrays: dict[str, np.ndarray]) -> ShiftReference:
    return ShiftReference(
        version=version_id,
        sites=sites,
        embeddings={site: arrays[f"site_{i}"] for i, site in enumerate(sites)},
        scale=arrays["scale"],
        threshold=float(arrays["threshold"]),
        calibration_cases=[tuple(pair) for pair in json.loads(str(arrays["calibration_cases"]))],
        calibration_scores=arrays["calibration_scores"],
    )
