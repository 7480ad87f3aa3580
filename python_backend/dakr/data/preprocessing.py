"""Turning a volume into network input and mapping predictions back onto the original grid.

Steps, recorded with each model version through :class:`dakr.config.PreprocessConfig`:
resampling to ``target_spacing`` (linear for images, nearest neighbour for labels; ``None``
keeps the native grid) and per-volume intensity normalisation (``zscore`` over non-zero
voxels, or ``percentile`` clipping then rescaling to [0, 1]). The resampled grid covers the
whole original extent, so :func:`restore_geometry` finds a value for every original voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

import numpy as np
import SimpleITK as sitk

from dakr.config import PreprocessConfig
from dakr.data.errors import ImageGridError
from dakr.data.io import label_image_like, read_image
from dakr.data.limits import ImageLimits
from dakr.data.site import case_id_from_image

_SAME_SPACING_RTOL = 1e-6
#: Voxel fraction ignored when rounding the resampled size up (avoids a spurious extra slice).
_SIZE_TOLERANCE = 1e-3
_MIN_STD = 1e-8


@dataclass
class PreprocessedCase:
    """A case on the preprocessed grid.

    ``image`` is float32 (z, y, x); ``label`` is uint8 (z, y, x) or ``None``; ``reference``
    is a blank image carrying the preprocessed geometry (its pixels are meaningless).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    reference: sitk.Image


def preprocess_case(
    image_path: str | PathLike[str],
    label_path: str | PathLike[str] | None,
    cfg: PreprocessConfig,
    case_id: str | None = None,
) -> PreprocessedCase:
    """Read, resample and normalise one case; the label map goes onto the image's new grid.

    ``case_id`` defaults to the image file name without suffix and trailing ``_0000``.
    """
    array, reference = preprocess_image(read_image(image_path), cfg)
    label = None
    if label_path is not None:
        on_grid = sitk.Resample(read_image(label_path), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
        label = sitk.GetArrayFromImage(on_grid)
    return PreprocessedCase(case_id or case_id_from_image(image_path), array, label, reference)


def preprocess_image(image: sitk.Image, cfg: PreprocessConfig) -> tuple[np.ndarray, sitk.Image]:
    """Resample (linear) and normalise ``image``; return the float32 (z, y, x) array and its grid."""
    cfg.validate()
    reference = _target_grid(image, cfg.target_spacing)
    source = sitk.Cast(image, sitk.sitkFloat32)
    if _needs_resampling(image, cfg.target_spacing):
        background = float(np.min(sitk.GetArrayViewFromImage(source)))
        source = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(source)
    if cfg.normalization == "zscore":
        return _zscore(array), reference
    return _percentile_rescale(array, cfg.clip_percentiles), reference


def check_prediction_grid(source: str, image: sitk.Image, cfg: PreprocessConfig, limits: ImageLimits | None = None) -> None:
    """Refuse a volume to predict whose spacing is absurd or whose resampled grid is too large.

    Resampling to ``cfg.target_spacing`` multiplies the voxel count by the ratio of spacings, so
    a small volume with huge voxels would become an enormous grid. Checked on the header values
    before any resampling; raises :class:`ImageGridError` naming ``source`` and the limit
    (``limits`` defaults to :meth:`ImageLimits.from_environment`).
    """
    limits = limits or ImageLimits.from_environment()
    spacing = image.GetSpacing()
    if max(spacing) > limits.max_spacing_mm:
        raise ImageGridError(
            source,
            f"its voxel spacing {'x'.join(f'{s:g}' for s in spacing)} mm exceeds the {limits.max_spacing_mm:g} mm "
            "accepted for prediction (no scanner has voxels that large; the header is probably wrong)",
            limits.spacing_fix(),
        )
    size = _resampled_size(image, cfg.target_spacing)
    voxels = int(np.prod(size, dtype=object))
    if voxels > limits.max_resampled_voxels:
        raise ImageGridError(
            source,
            f"resampled to the model's spacing {cfg.target_spacing} mm it would have {'x'.join(map(str, size))} = {voxels} "
            f"voxels, more than the limit of {limits.max_resampled_voxels}",
            limits.spacing_fix(),
        )


def restore_geometry(label_zyx: np.ndarray, reference: sitk.Image, original: sitk.Image) -> sitk.Image:
    """Map a label array on the preprocessed grid ``reference`` back onto ``original``'s grid.

    Nearest-neighbour; the result is uint8 with exactly ``original``'s size, spacing, origin
    and direction, so it overlays the original image in Slicer.
    """
    on_reference = label_image_like(label_zyx, reference)
    return sitk.Resample(on_reference, original, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)


def _needs_resampling(image: sitk.Image, target_spacing: tuple[float, float, float] | None) -> bool:
    return target_spacing is not None and not np.allclose(target_spacing, image.GetSpacing(), rtol=_SAME_SPACING_RTOL, atol=0.0)


def _resampled_size(image: sitk.Image, target_spacing: tuple[float, float, float] | None) -> list[int]:
    """Voxels per axis (x, y, z) of ``image``'s extent on the ``target_spacing`` grid."""
    if not _needs_resampling(image, target_spacing):
        return list(image.GetSize())
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing(), dtype=float)
    return [int(s) for s in np.maximum(1, np.ceil(extent / np.asarray(target_spacing, dtype=float) - _SIZE_TOLERANCE))]


def _target_grid(image: sitk.Image, target_spacing: tuple[float, float, float] | None) -> sitk.Image:
    """A blank uint8 image with the preprocessed geometry, covering ``image``'s physical extent."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    size = _resampled_size(image, target_spacing)
    origin = image.GetOrigin()
    if _needs_resampling(image, target_spacing):
        new_spacing = np.asarray(target_spacing, dtype=float)
        # First new voxel starts where the first original voxel starts (half a voxel before its centre).
        origin = image.TransformContinuousIndexToPhysicalPoint(((new_spacing / spacing - 1.0) / 2.0).tolist())
        spacing = new_spacing
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin)
    grid.SetDirection(image.GetDirection())
    return grid


def _zscore(array: np.ndarray) -> np.ndarray:
    """Z-score with statistics over non-zero voxels; zero (background) voxels stay 0."""
    nonzero = array != 0
    if not nonzero.any():
        return array
    values = array[nonzero]
    mean, std = values.mean(dtype=np.float64), max(float(values.std(dtype=np.float64)), _MIN_STD)
    array -= mean
    array /= std
    array[~nonzero] = 0.0
    return array


def _percentile_rescale(array: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the given percentiles, then rescale linearly to [0, 1]."""
    low, high = (float(v) for v in np.percentile(array, percentiles))
    if high <= low:
        return np.zeros_like(array)
    np.clip(array, low, high, out=array)
    array -= low
    array /= high - low
    return array
