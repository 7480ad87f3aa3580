"""Validation advice fits the case: Slicer's cropping only when the label block lies inside the image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dakr.data import DataError, SiteValidationError, discover_site, validate_site

SPACING = (1.0, 1.0, 2.0)
ORIGIN = (3.0, -4.0, 5.0)


def _volume(shape_zyx: tuple[int, int, int], origin=ORIGIN, spacing=SPACING, dtype=np.float32, fill: int = 0) -> sitk.Image:
    array = np.full(shape_zyx, fill, dtype)
    array[1:3, 2:6, 2:6] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _site(root: Path, label_for_case0: sitk.Image) -> Path:
    for index in range(2):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        sitk.WriteImage(_volume((6, 12, 12)), str(root / "imagesTr" / f"case{index}_0000.nii.gz"))
        label = label_for_case0 if index == 0 else _volume((6, 12, 12), dtype=np.uint8)
        sitk.WriteImage(label, str(root / "labelsTr" / f"case{index}.nii.gz"))
    return root


def _problem(root: Path) -> DataError:
    try:
        validate_site(discover_site(root), None)
    except SiteValidationError as exc:
        assert len(exc.problems) == 1, exc.problems
        return exc.problems[0]
    raise AssertionError("the site was accepted")


def test_a_block_inside_the_image_is_explained_as_slicer_cropping(tmp_path: Path) -> None:
    full = _volume((6, 12, 12), dtype=np.uint8)
    cropped = sitk.RegionOfInterest(full, [6, 5, 3], [2, 1, 1])
    problem = _problem(_site(tmp_path, cropped)).problem
    assert "voxel offset (2, 1, 1)" in problem and "cropped" in problem


def test_a_larger_label_volume_is_a_geometry_disagreement(tmp_path: Path) -> None:
    larger = _volume((8, 14, 14), origin=(1.0, -6.0, 1.0), dtype=np.uint8)
    problem = _problem(_site(tmp_path, larger)).problem
    assert "cropped" not in problem and "the geometries disagree" in problem
    assert "label map size 14x14x8, spacing (1, 1, 2) mm, origin (1, -6, 1) mm" in problem
    assert "image size 12x12x6, spacing (1, 1, 2) mm, origin (3, -4, 5) mm" in problem


def test_a_label_of_another_subject_sticking_out_is_a_geometry_disagreement(tmp_path: Path) -> None:
    shifted = _volume((6, 12, 10), origin=(3.0, -6.0, 5.0), dtype=np.uint8)
    problem = _problem(_site(tmp_path, shifted)).problem
    assert "cropped" not in problem and "the geometries disagree" in problem and "origin (3, -6, 5)" in problem


def test_other_spacing_is_a_geometry_disagreement(tmp_path: Path) -> None:
    coarse = _volume((3, 6, 6), spacing=(2.0, 2.0, 4.0), dtype=np.uint8)
    problem = _problem(_site(tmp_path, coarse)).problem
    assert "cropped" not in problem and "spacing (2, 2, 4) mm" in problem and "spacing (1, 1, 2) mm" in problem
