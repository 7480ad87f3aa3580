"""Prediction output: checked before any inference, written with the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import dakr.pipeline
from dakr.cli import main
from dakr.data.io import write_image
from dakr.output_paths import check_output_path, user_file_mode


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def _refuse_inference(*args, **kwargs):
    raise AssertionError("inference ran before the output path was checked")


@pytest.mark.parametrize("name", ["out.txt", "out", "folder"])
def test_predict_refuses_a_bad_output_before_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    monkeypatch.setattr(dakr.pipeline, "predict_image", _refuse_inference)
    (tmp_path / "folder.nii.gz").mkdir()
    out = tmp_path / (name if name != "folder" else "folder.nii.gz")
    assert main(["predict", str(tmp_path / "no-store"), str(tmp_path / "no-image.nii.gz"), str(out)]) == 1
    error = capsys.readouterr().err
    assert str(out) in error and "Fix:" in error


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("not a folder")
    with pytest.raises(ValueError, match="not a writable folder"):
        check_output_path(tmp_path / "notes" / "out.nii.gz")


def test_a_new_folder_under_a_writable_one_is_fine(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new" / "out.nrrd") == tmp_path / "new" / "out.nrrd"


def test_written_volumes_follow_the_umask(tmp_path: Path, umask_027) -> None:
    assert user_file_mode() == 0o640
    path = tmp_path / "label.nii.gz"
    write_image(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.uint8)), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
