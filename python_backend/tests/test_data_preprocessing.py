"""Preprocessing: resampling, normalisation and exact restoration onto the original grid."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.config import ConfigError, PreprocessConfig
from dakr.data import preprocess_case, preprocess_image, restore_geometry

SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-20.0, 15.0, 40.0)
# A rotation about z by 30 degrees.
DIRECTION = (0.8660254037844387, -0.5, 0.0, 0.5, 0.8660254037844387, 0.0, 0.0, 0.0, 1.0)


def _image(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _phantom(shape=(12, 40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """Intensities (zero background) and a two-structure label map, (z, y, x)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = np.array(shape) / 2.0
    radius = np.sqrt(((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.9) ** 2 + ((x - centre[2]) * 0.8) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[radius < 13.0] = 1
    labels[radius < 7.0] = 2
    rng = np.random.default_rng(0)
    intensities = np.where(labels > 0, 100.0 + 30.0 * labels + rng.normal(0, 5, shape), 0.0).astype(np.float32)
    return intensities, labels


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_resampling_to_target_spacing_covers_the_original_extent() -> None:
    image = _image(np.ones((8, 16, 16), np.float32), spacing=(1.0, 1.0, 2.0))
    array, reference = preprocess_image(image, PreprocessConfig(target_spacing=(2.0, 2.0, 3.0)))
    assert array.dtype == np.float32 and array.shape == (6, 8, 8)  # z: 16 mm / 3 mm rounded up
    assert reference.GetSize() == (8, 8, 6) and reference.GetSpacing() == (2.0, 2.0, 3.0)
    assert reference.GetDirection() == image.GetDirection()
    # The first new voxel starts where the first original voxel starts.
    start_new = reference.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    start_old = image.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    np.testing.assert_allclose(start_new, start_old, atol=1e-9)


def test_no_target_spacing_keeps_the_native_grid() -> None:
    intensities, _ = _phantom()
    image = _image(intensities)
    array, reference = preprocess_image(image, PreprocessConfig(target_spacing=None))
    assert array.shape == intensities.shape
    assert (reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection()) == (
        image.GetSize(),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
    )


def test_images_are_resampled_linearly_and_labels_by_nearest_neighbour(tmp_path: Path) -> None:
    steps = np.ones((8, 16, 16), np.float32)
    steps[:, :, 8:] = 3.0
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[:, :, 8:] = 2
    sitk.WriteImage(_image(steps, spacing=(1.0, 1.0, 1.0)), str(tmp_path / "s_0000.nrrd"))
    sitk.WriteImage(_image(labels, spacing=(1.0, 1.0, 1.0)), str(tmp_path / "s.nrrd"))
    case = preprocess_case(tmp_path / "s_0000.nrrd", tmp_path / "s.nrrd", PreprocessConfig(target_spacing=(0.3, 0.3, 0.3)))
    assert case.case_id == "s"
    assert case.label is not None and case.label.dtype == np.uint8 and case.label.shape == case.image.shape
    assert set(np.unique(case.label)) == {0, 2}
    assert len(np.unique(np.round(case.image, 4))) > 2  # linear interpolation creates values in between


def test_zscore_uses_non_zero_voxels_and_keeps_background_zero() -> None:
    intensities, labels = _phantom()
    array, _ = preprocess_image(_image(intensities), PreprocessConfig(target_spacing=None, normalization="zscore"))
    foreground = labels > 0
    assert abs(array[foreground].mean()) < 1e-4 and abs(array[foreground].std() - 1.0) < 1e-4
    assert np.all(array[~foreground] == 0.0)


def test_percentile_normalisation_clips_outliers_and_rescales_to_unit_range() -> None:
    intensities = np.random.default_rng(1).uniform(0.0, 100.0, (10, 20, 20)).astype(np.float32)
    intensities[0, 0, 0] = 1e6
    cfg = PreprocessConfig(target_spacing=None, normalization="percentile", clip_percentiles=(1.0, 99.0))
    array, _ = preprocess_image(_image(intensities), cfg)
    assert array.min() == 0.0 and array.max() == 1.0
    assert array[0, 0, 0] == 1.0
    assert 0.4 < float(np.median(array)) < 0.6  # the outlier did not squash the rest


def test_constant_image_normalises_to_zeros_without_nan() -> None:
    for normalization in ("zscore", "percentile"):
        array, _ = preprocess_image(_image(np.full((4, 8, 8), 5.0, np.float32)), PreprocessConfig(normalization=normalization))
        assert np.all(array == 0.0)


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="normalization"):
        preprocess_image(_image(np.ones((4, 8, 8), np.float32)), PreprocessConfig(normalization="minmax"))


@pytest.mark.parametrize("target_spacing", [(1.5, 1.5, 1.5), (0.6, 0.6, 1.0), None])
def test_label_round_trip_restores_the_original_grid(tmp_path: Path, target_spacing) -> None:
    intensities, labels = _phantom()
    sitk.WriteImage(_image(intensities), str(tmp_path / "p_0000.nii.gz"))
    sitk.WriteImage(_image(labels), str(tmp_path / "p.nii.gz"))
    original = sitk.ReadImage(str(tmp_path / "p_0000.nii.gz"))
    case = preprocess_case(tmp_path / "p_0000.nii.gz", tmp_path / "p.nii.gz", PreprocessConfig(target_spacing=target_spacing), case_id="patient7")
    assert case.case_id == "patient7"
    restored = restore_geometry(case.label, case.reference, original)
    assert restored.GetPixelID() == sitk.sitkUInt8
    assert restored.GetSize() == original.GetSize()
    assert restored.GetSpacing() == original.GetSpacing()
    assert restored.GetOrigin() == original.GetOrigin()
    assert restored.GetDirection() == original.GetDirection()
    restored_labels = sitk.GetArrayFromImage(restored)
    for value in (1, 2):
        assert _dice(restored_labels, labels, value) > 0.9
    if target_spacing is None:
        np.testing.assert_array_equal(restored_labels, labels)


def test_restore_rejects_an_array_of_the_wrong_shape() -> None:
    intensities, _ = _phantom()
    image = _image(intensities)
    _, reference = preprocess_image(image, PreprocessConfig())
    with pytest.raises(ValueError, match="does not match"):
        restore_geometry(np.zeros(intensities.shape, np.uint8), reference, image)


def test_preprocess_case_without_label(tmp_path: Path) -> None:
    intensities, _ = _phantom()
    sitk.WriteImage(_image(intensities), str(tmp_path / "scan.mha"))
    case = preprocess_case(tmp_path / "scan.mha", None, PreprocessConfig())
    assert case.case_id == "scan" and case.label is None
    assert case.image.shape == tuple(reversed(case.reference.GetSize()))


@pytest.mark.parametrize("normalization", ["zscore", "percentile"])
def test_preprocessing_a_100_cube_takes_well_under_a_second(normalization: str) -> None:
    rng = np.random.default_rng(0)
    image = _image(rng.normal(100.0, 20.0, (100, 100, 100)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
    cfg = PreprocessConfig(target_spacing=(1.5, 1.5, 1.5), normalization=normalization)
    preprocess_image(image, cfg)
    start = time.perf_counter()
    array, _ = preprocess_image(image, cfg)
    elapsed = time.perf_counter() - start
    assert array.shape == (67, 67, 67)
    assert elapsed < 0.3, f"preprocessing took {elapsed:.3f} s"
