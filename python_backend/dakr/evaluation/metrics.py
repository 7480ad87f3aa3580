"""Per-volume segmentation metrics: 3D Dice and HD95 per class (MONAI implementations).

Inputs are integer label arrays of one volume in SimpleITK array order ``(z, y, x)``, with the
same shape for prediction and ground truth, and the class values to score (label map values,
e.g. ``[1, 2, 3]``). Conventions for classes missing from a volume:

- absent from both prediction and ground truth: Dice and HD95 are NaN (nothing to score; NaN is
  excluded from means);
- absent from exactly one of them (a missed or a hallucinated structure): Dice is 0 and HD95 is
  ``inf`` (the surface distance to an empty surface is unbounded). ``inf`` is kept on purpose so
  that an average over volumes shows the failure instead of silently dropping it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

#: The deprecation warning MONAI raises from inside compute_hausdorff_distance (nothing a caller can change).
_MONAI_EDGES_WARNING = r".*get_mask_edges:always_return_as_numpy"


def dice_per_class(pred_zyx: np.ndarray, label_zyx: np.ndarray, class_values: Sequence[int]) -> dict[int, float]:
    """3D Dice of each class value on one volume; NaN when the class is absent from both arrays."""
    pred, truth = _one_hot_pair(pred_zyx, label_zyx, class_values)
    dice = compute_dice(pred, truth, include_background=True, ignore_empty=False)[0]
    present_in_either = (pred.flatten(2).any(dim=2) | truth.flatten(2).any(dim=2))[0]
    return {
        int(value): float(dice[c]) if present_in_either[c] else math.nan for c, value in enumerate(class_values)
    }


def hd95_per_class(
    pred_zyx: np.ndarray,
    label_zyx: np.ndarray,
    class_values: Sequence[int],
    spacing_xyz: Sequence[float],
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance in mm of each class value on one volume.

    ``spacing_xyz`` is the voxel spacing in SimpleITK ``(x, y, z)`` order. NaN when the class is
    absent from both arrays, ``inf`` when it is absent from exactly one (see the module docstring).
    """
    if len(spacing_xyz) != 3:
        raise ValueError(f"spacing_xyz must have 3 values (x, y, z) in mm, got {tuple(spacing_xyz)}")
    pred, truth = _one_hot_pair(pred_zyx, label_zyx, class_values)
    in_pred = pred.flatten(2).any(dim=2)[0]
    in_truth = truth.flatten(2).any(dim=2)[0]
    result = {int(v): math.nan if not (in_pred[c] or in_truth[c]) else math.inf for c, v in enumerate(class_values)}
    scored = [c for c in range(len(class_values)) if in_pred[c] and in_truth[c]]
    if scored:
        with warnings.catch_warnings():
            # MONAI 1.5-1.6 passes its own deprecated argument to get_mask_edges internally.
            warnings.filterwarnings("ignore", message=_MONAI_EDGES_WARNING, category=FutureWarning)
            distances = compute_hausdorff_distance(
                pred[:, scored],
                truth[:, scored],
                include_background=True,
                percentile=95,
                spacing=[float(s) for s in reversed(spacing_xyz)],
            )[0]
        result.update({int(class_values[c]): float(d) for c, d in zip(scored, distances)})
    return result


def mean_foreground_dice(dice_per_class: Mapping[int, float]) -> float:
    """Mean Dice over the foreground classes (class value 0 is skipped), ignoring NaN; NaN if none remain."""
    values = [d for value, d in dice_per_class.items() if value != 0 and not math.isnan(d)]
    return float(np.mean(values)) if values else math.nan


def _one_hot_pair(
    pred_zyx: np.ndarray, label_zyx: np.ndarray, class_values: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate both arrays and return boolean one-hot tensors of shape ``(1, len(class_values), z, y, x)``."""
    for name, array in (("prediction", pred_zyx), ("label", label_zyx)):
        if array.ndim != 3 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(
                f"{name} must be a 3D integer label array (z, y, x), got shape {array.shape} dtype {array.dtype}; "
                "pass the argmax label map, not probabilities"
            )
    if pred_zyx.shape != label_zyx.shape:
        raise ValueError(
            f"prediction shape {pred_zyx.shape} differs from label shape {label_zyx.shape}; "
            "resample the prediction onto the label grid first"
        )
    if len(class_values) == 0:
        raise ValueError("class_values is empty; pass the label values to score, e.g. [1, 2, 3]")
    values = torch.as_tensor(list(class_values))[:, None, None, None]
    pred = torch.from_numpy(np.ascontiguousarray(pred_zyx)).long()[None] == values
    truth = torch.from_numpy(np.ascontiguousarray(label_zyx)).long()[None] == values
    return pred[None], truth[None]
