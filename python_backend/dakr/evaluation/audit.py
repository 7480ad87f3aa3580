"""Audit cases for the report: one case's image, ground truth and two versions' predictions.

Arrays are in SimpleITK order ``(z, y, x)``. The change map compares the previous and the new
prediction voxel by voxel against the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dakr.data.io import read_image

#: Change-map codes: unchanged, now correct (was wrong), now wrong (was correct), changed but wrong both times.
UNCHANGED, GAINED, LOST, STILL_WRONG = 0, 1, 2, 3


@dataclass(frozen=True)
class CaseVolumes:
    """One audit case as ``(z, y, x)`` arrays; ``before`` is ``None`` when there is no previous version."""

    site: str
    case_id: str
    image: np.ndarray
    truth: np.ndarray
    after: np.ndarray
    after_version: int
    before: np.ndarray | None
    before_version: int | None
    spacing_zyx: tuple[float, float, float]

    @cached_property
    def changes(self) -> np.ndarray | None:
        """The :func:`change_map` of the two predictions, ``None`` without a previous version."""
        return None if self.before is None else change_map(self.truth, self.before, self.after)


def load_case_volumes(
    site: str,
    case_id: str,
    image_path: Path,
    label_path: Path,
    after: tuple[int, Path],
    before: tuple[int, Path] | None,
) -> CaseVolumes:
    """Read a case and its predictions (``(version, path)`` pairs); all must share the label's grid."""
    image = read_image(image_path)
    truth = _label_array(label_path, image.GetSize())
    return CaseVolumes(
        site=site,
        case_id=case_id,
        image=sitk.GetArrayFromImage(image).astype(np.float32),
        truth=truth,
        after=_label_array(after[1], image.GetSize()),
        after_version=after[0],
        before=None if before is None else _label_array(before[1], image.GetSize()),
        before_version=None if before is None else before[0],
        spacing_zyx=tuple(float(s) for s in reversed(image.GetSpacing())),
    )


def _label_array(path: Path, size_xyz: tuple[int, ...]) -> np.ndarray:
    label = read_image(path)
    if label.GetSize() != size_xyz:
        raise ValueError(
            f"{path}: label map size {label.GetSize()} differs from the case image size {size_xyz}. "
            "Fix: delete this cached prediction so it is recomputed on the image grid"
        )
    return sitk.GetArrayFromImage(label).astype(np.int64)


def change_map(truth: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """uint8 map of voxels whose prediction changed: GAINED, LOST, STILL_WRONG (else UNCHANGED)."""
    changed = before != after
    codes = np.full(truth.shape, UNCHANGED, dtype=np.uint8)
    codes[changed] = STILL_WRONG
    codes[changed & (after == truth)] = GAINED
    codes[changed & (before == truth)] = LOST
    return codes


def centre_of_mass(label: np.ndarray) -> tuple[int, ...]:
    """Rounded centre of mass of the foreground (label > 0), or the volume centre when there is none."""
    foreground = np.argwhere(label > 0)
    if foreground.size == 0:
        return tuple(size // 2 for size in label.shape)
    return tuple(int(round(c)) for c in foreground.mean(axis=0))
