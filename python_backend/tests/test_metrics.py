"""Tests for dakr.evaluation.metrics on small hand-made label volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dakr.evaluation.metrics import dice_per_class, hd95_per_class, mean_foreground_dice

# MONAI 1.6 warns about its own deprecated internal argument; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")


def cube_volume(offset_zyx: tuple[int, int, int] = (0, 0, 0), value: int = 1) -> np.ndarray:
    """A 3x3x3 cube of ``value`` at voxels 2..4 (+ offset) in a 9x9x9 (z, y, x) volume."""
    volume = np.zeros((9, 9, 9), dtype=np.uint8)
    z, y, x = (2 + o for o in offset_zyx)
    volume[z : z + 3, y : y + 3, x : x + 3] = value
    return volume


def test_dice_of_shifted_cube() -> None:
    # overlap 3*3*2 = 18 voxels, each cube 27: 2*18 / (27 + 27) = 2/3
    dice = dice_per_class(cube_volume(), cube_volume((0, 0, 1)), [1])
    assert dice[1] == pytest.approx(2 / 3)


def test_dice_per_class_with_absent_classes() -> None:
    pred = cube_volume()
    pred[0, 0, 0] = 3  # class 3 only in the prediction
    label = cube_volume()
    label[8, 8, 8] = 2  # class 2 only in the label
    dice = dice_per_class(pred, label, [1, 2, 3, 4])
    assert dice[1] == pytest.approx(1.0)
    assert dice[2] == 0.0 and dice[3] == 0.0
    assert math.isnan(dice[4])  # absent in both


def test_dice_keys_are_the_class_values() -> None:
    label = cube_volume(value=7)
    assert list(dice_per_class(label, label, [7, 5])) == [7, 5]


def test_hd95_of_identical_masks_is_zero() -> None:
    assert hd95_per_class(cube_volume(), cube_volume(), [1], (1.0, 1.0, 1.0))[1] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("offset_zyx", "spacing_xyz", "expected_mm"),
    [
        ((0, 0, 1), (2.0, 1.0, 1.0), 2.0),  # shift along x, x spacing 2 mm
        ((1, 0, 0), (1.0, 1.0, 3.0), 3.0),  # shift along z, z spacing 3 mm
        ((1, 0, 0), (2.0, 2.0, 0.5), 0.5),  # shift along z, z spacing 0.5 mm
    ],
)
def test_hd95_of_shifted_cube_uses_xyz_spacing_on_zyx_arrays(
    offset_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float], expected_mm: float
) -> None:
    # Each cube's surface has 26 voxels. Shifted by one voxel, 10 of them (9 on the trailing face
    # plus the one that lands on the other cube's centre) are one voxel from the other surface and
    # 16 are on it: 10/26 > 5%, so the 95th percentile is one voxel = the spacing along the shift.
    hd95 = hd95_per_class(cube_volume(), cube_volume(offset_zyx), [1], spacing_xyz)
    assert hd95[1] == pytest.approx(expected_mm)


def test_hd95_with_absent_classes() -> None:
    pred = cube_volume()
    pred[0, 0, 0] = 3
    label = cube_volume()
    label[8, 8, 8] = 2
    hd95 = hd95_per_class(pred, label, [1, 2, 3, 4], (1.0, 1.0, 1.0))
    assert hd95[1] == pytest.approx(0.0)
    assert hd95[2] == math.inf and hd95[3] == math.inf  # in one array only
    assert math.isnan(hd95[4])  # in neither


def test_mean_foreground_dice_skips_background_and_nan() -> None:
    # (0.5 + 0.2) / 2 = 0.35; background 0.9 and the NaN class are left out
    assert mean_foreground_dice({0: 0.9, 1: 0.5, 2: math.nan, 3: 0.2}) == pytest.approx(0.35)
    assert math.isnan(mean_foreground_dice({1: math.nan, 2: math.nan}))


def test_rejects_bad_inputs() -> None:
    volume = cube_volume()
    with pytest.raises(ValueError, match="integer"):
        dice_per_class(volume.astype(np.float32), volume, [1])
    with pytest.raises(ValueError, match="3D"):
        dice_per_class(volume[0], volume[0], [1])
    with pytest.raises(ValueError, match="differs"):
        dice_per_class(volume[:8], volume, [1])
    with pytest.raises(ValueError, match="class_values"):
        dice_per_class(volume, volume, [])
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(volume, volume, [1], (1.0, 1.0))
