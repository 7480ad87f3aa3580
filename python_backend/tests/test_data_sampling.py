"""PatchSampler: shapes, padding, seeded determinism, foreground oversampling and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.data import PatchSampler, PreprocessedCase


def _case(case_id: str, shape=(12, 40, 48), foreground=((5, 7), (20, 23), (30, 33)), seed=0) -> PreprocessedCase:
    image = np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(lo, hi) for lo, hi in foreground)] = 1
    label[foreground[0][0], foreground[1][0], foreground[2][0]] = 2
    reference = sitk.Image([shape[2], shape[1], shape[0]], sitk.sitkUInt8)
    return PreprocessedCase(case_id, image, label, reference)


CASES = [_case("a"), _case("b", shape=(9, 30, 20), foreground=((1, 2), (3, 5), (15, 18)), seed=1)]


@pytest.mark.parametrize(("patch_size", "spatial_dims"), [((32, 32), 2), ((8, 16, 16), 3)])
def test_batch_shapes_and_dtypes(patch_size: tuple[int, ...], spatial_dims: int) -> None:
    images, labels = PatchSampler(CASES, patch_size, spatial_dims, 0.5).sample(5, np.random.default_rng(0))
    assert images.shape == labels.shape == (5, 1, *patch_size)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.parametrize(("patch_size", "spatial_dims"), [((32, 32), 2), ((8, 16, 16), 3)])
def test_same_seed_same_batch_other_seed_other_batch(patch_size: tuple[int, ...], spatial_dims: int) -> None:
    sampler = PatchSampler(CASES, patch_size, spatial_dims, 0.5)
    first = sampler.sample(8, np.random.default_rng(42))
    again = sampler.sample(8, np.random.default_rng(42))
    other = sampler.sample(8, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(("patch_size", "spatial_dims"), [((16, 16), 2), ((4, 8, 8), 3)])
def test_full_oversampling_always_contains_foreground(patch_size: tuple[int, ...], spatial_dims: int) -> None:
    sampler = PatchSampler(CASES, patch_size, spatial_dims, 1.0)
    _, labels = sampler.sample(64, np.random.default_rng(7))
    assert all(np.any(patch > 0) for patch in labels)


def test_no_oversampling_rarely_hits_a_small_foreground() -> None:
    sampler = PatchSampler([CASES[0]], (16, 16), 2, 0.0)
    _, labels = sampler.sample(64, np.random.default_rng(7))
    hits = sum(bool(np.any(patch > 0)) for patch in labels)
    assert hits < 32  # foreground lies in 2 of 12 slices


def test_patch_matches_the_volume_at_its_position() -> None:
    case = CASES[0]
    images, labels = PatchSampler([case], (12, 40, 48), 3, 0.0).sample(1, np.random.default_rng(0))
    np.testing.assert_array_equal(images[0, 0], case.image)
    np.testing.assert_array_equal(labels[0, 0], case.label)


def test_small_volumes_are_padded_with_image_minimum_and_background() -> None:
    case = _case("tiny", shape=(3, 6, 5), foreground=((1, 2), (2, 4), (1, 3)))
    images, labels = PatchSampler([case], (5, 10, 10), 3, 0.0).sample(4, np.random.default_rng(3))
    for image, label in zip(images[:, 0], labels[:, 0]):
        inside = np.zeros(image.shape, bool)
        # The whole volume fits, so each patch holds it once, somewhere.
        found = np.argwhere(np.isclose(image, case.image[0, 0, 0]))
        z, y, x = found[0]
        inside[z : z + 3, y : y + 6, x : x + 5] = True
        np.testing.assert_array_equal(image[inside].reshape(case.image.shape), case.image)
        np.testing.assert_array_equal(label[inside].reshape(case.label.shape), case.label)
        assert np.all(image[~inside] == case.image.min()) and np.all(label[~inside] == 0)


def test_2d_slices_are_axial() -> None:
    case = CASES[0]
    images, _ = PatchSampler([case], (40, 48), 2, 0.0).sample(6, np.random.default_rng(5))
    for image in images[:, 0]:
        assert any(np.array_equal(image, axial) for axial in case.image)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": (16, 16), "spatial_dims": 3}, "patch_size"),
        ({"patch_size": (16, 0), "spatial_dims": 2}, "patch_size"),
        ({"patch_size": (16, 16), "spatial_dims": 1}, "spatial_dims"),
        ({"foreground_oversample": 1.5}, "foreground_oversample"),
        ({"cases": []}, "no cases"),
        ({"cases": [PreprocessedCase("u", np.zeros((2, 4, 4), np.float32), None, sitk.Image(4, 4, 2, sitk.sitkUInt8))]}, "no label map"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    arguments = {"cases": CASES, "patch_size": (16, 16), "spatial_dims": 2, "foreground_oversample": 0.5} | kwargs
    with pytest.raises(ValueError, match=message):
        PatchSampler(**arguments)


def test_sampling_16_slices_takes_milliseconds_even_from_large_volumes() -> None:
    shape = (96, 256, 256)
    label = np.zeros(shape, np.uint8)
    label[40:60, 100:150, 100:150] = 1
    reference = sitk.Image([256, 256, 96], sitk.sitkUInt8)
    big = [PreprocessedCase(str(i), np.full(shape, float(i), np.float32), label, reference) for i in range(2)]
    sampler = PatchSampler(big, (128, 128), 2, 0.67)
    rng = np.random.default_rng(0)
    sampler.sample(16, rng)
    start = time.perf_counter()
    for _ in range(20):
        sampler.sample(16, rng)
    per_batch = (time.perf_counter() - start) / 20
    assert per_batch < 0.01, f"a batch took {per_batch * 1000:.1f} ms"
