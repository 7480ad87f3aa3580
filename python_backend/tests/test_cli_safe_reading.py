"""The command line reads local folders as trusted, but only inside them, and limits prediction grids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.cli import main
from dakr.data import discover_site
from dakr.store import Store
from hostile_volumes import detached_mha
from test_service_support import add_tiny_version, case_volumes, write_site


def _site_with_detached_image(root: Path, data_file: str) -> Path:
    """A 2-case site whose case00 image is an MHA header pointing at ``data_file``."""
    folder = write_site(root, n_cases=2)
    image = case_volumes(0)[0]
    raw = folder / "voxels" / "case00.raw"
    raw.parent.mkdir()
    raw.write_bytes(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkUInt8)).tobytes())
    (folder / "imagesTr" / "case00_0000.nii.gz").unlink()
    header = detached_mha(folder / "imagesTr" / "case00_0000.mha", data_file, size=image.GetSize())
    text = header.read_text().replace("ElementSpacing = 1 1 1", "ElementSpacing = " + " ".join(map(str, image.GetSpacing())))
    origin = " ".join(map(str, image.GetOrigin()))
    matrix = " ".join(map(str, np.asarray(image.GetDirection()).reshape(3, 3).T.ravel()))
    header.write_text(text.replace("ElementType", f"Offset = {origin}\nTransformMatrix = {matrix}\nElementType"))
    return folder


def test_site_add_reads_a_separate_data_file_only_inside_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["init", store]) == 0
    inside = _site_with_detached_image(tmp_path / "inside", "../voxels/case00.raw")
    assert main(["site", "add", store, "inside", str(inside)]) == 0, capsys.readouterr().err
    outside = _site_with_detached_image(tmp_path / "outside", "../../elsewhere.raw")
    shutil.copy(inside / "voxels" / "case00.raw", tmp_path / "elsewhere.raw")
    assert main(["site", "add", store, "outside", str(outside)]) == 1
    assert "points to voxel data outside the folder" in capsys.readouterr().err
    assert [site.name for site in Store.open(store).sites()] == ["inside"]


def test_cli_predict_refuses_an_absurd_spacing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store.init(tmp_path / "store")
    store.add_site("A", discover_site(write_site(tmp_path / "A")))
    add_tiny_version(store, "A", None)
    image = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    image.SetSpacing((60.0, 60.0, 60.0))
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out.nii.gz"
    assert main(["predict", str(store.path), str(path), str(out)]) == 1
    assert f"{path}: its voxel spacing 60x60x60 mm exceeds the 20 mm" in capsys.readouterr().err
    assert not out.exists()
