"""Prediction with an out-of-distribution warning and an optional uncertainty map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from dakr.data.preprocessing import check_prediction_grid, preprocess_image, restore_geometry
from dakr.shift.features import analyse_array
from dakr.shift.reference import load_reference
from dakr.store import Store


@dataclass
class ShiftedPrediction:
    """A label map on the input's grid, the case's shift verdict and its entropy map (0-1)."""

    labels: sitk.Image
    uncertainty: sitk.Image
    shift_score: float
    threshold: float
    nearest_site: str

    @property
    def out_of_distribution(self) -> bool:
        """True when the case lies beyond the range of the known sites' audit cases."""
        return self.shift_score > self.threshold

    @property
    def summary(self) -> str:
        """``shift score S (threshold T): ok`` or ``...: OUT OF DISTRIBUTION``."""
        state = "OUT OF DISTRIBUTION" if self.out_of_distribution else "ok"
        return f"shift score {self.shift_score:.2f} (threshold {self.threshold:.2f}): {state}"

    def to_dict(self) -> dict:
        """The verdict fields, JSON-ready."""
        return {
            "shift_score": self.shift_score,
            "threshold": self.threshold,
            "nearest_site": self.nearest_site,
            "out_of_distribution": self.out_of_distribution,
        }


def predict_with_shift(
    store: Store, image: sitk.Image, version: int | None = None, device: torch.device | None = None, *, source: str = "the volume"
) -> ShiftedPrediction:
    """Segment ``image`` with ``version`` (default: active) and score its shift from the known sites.

    Raises :class:`dakr.data.errors.ImageGridError` (naming ``source``) for an absurd spacing or a
    resampled grid over the limits, before any resampling.
    """
    from dakr.inference import default_device
    from dakr.pipeline import load_version_model, require_active_version

    device = device or default_device()
    version_id = version if version is not None else require_active_version(store).id
    model, config, values = load_version_model(store, version_id, device)
    check_prediction_grid(source, image, config.preprocess)
    array, grid = preprocess_image(image, config.preprocess)
    analysis = analyse_array(model, array, config, device)
    labels = restore_geometry(np.asarray(values, dtype=np.uint8)[analysis.prediction], grid, image)
    reference = load_reference(store, version_id, device=device)
    score, nearest = reference.score(analysis.embedding)
    return ShiftedPrediction(labels, _entropy_on_input_grid(analysis.entropy, grid, image), score, reference.threshold, nearest)


def _entropy_on_input_grid(entropy: np.ndarray, grid: sitk.Image, original: sitk.Image) -> sitk.Image:
    on_grid = sitk.GetImageFromArray(entropy.astype(np.float32))
    on_grid.CopyInformation(grid)
    return sitk.Resample(on_grid, original, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
