"""Reading and writing volumes: formats, geometry, Slicer segmentations, atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.data import DataError, image_suffix, label_image_like, read_image, sniff_format, write_image

SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-12.5, 30.0, 7.25)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(shape_zyx=(8, 16, 16), dtype=np.float32, seed=0) -> sitk.Image:
    array = np.random.default_rng(seed).normal(100.0, 20.0, shape_zyx).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _write_nrrd(path: Path, header: str, data: np.ndarray) -> Path:
    """Write a raw NRRD by hand, as Slicer lays out segmentation files."""
    path.write_bytes(header.encode() + b"\n" + np.ascontiguousarray(data).tobytes())
    return path


_SEG_HEADER = """NRRD0004
type: unsigned char
dimension: {dimension}
space: left-posterior-superior
sizes: {sizes}
space directions: {directions}
kinds: {kinds}
encoding: raw
space origin: (10,20,30)
Segment0_ID:=Segment_1
Segment0_LabelValue:=1
Segment0_Layer:=0
Segment0_Name:=GM
Segment1_ID:=Segment_2
Segment1_LabelValue:=2
Segment1_Layer:={second_layer}
Segment1_Name:=WM
"""


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_pixels_and_geometry(tmp_path: Path, suffix: str) -> None:
    image = _volume()
    path = tmp_path / f"case{suffix}"
    write_image(image, path)
    read = read_image(path)
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), DIRECTION, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_write_is_compressed_overwrites_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "label.nrrd"
    write_image(_volume(dtype=np.int16), path)
    write_image(_volume(dtype=np.int16, seed=1), path)
    assert b"encoding: gzip" in path.read_bytes()[:1000]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), sitk.GetArrayFromImage(_volume(dtype=np.int16, seed=1)))
    assert [p.name for p in path.parent.iterdir()] == ["label.nrrd"]


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "image.nii.gz"
    write_image(_volume(), path)
    before = path.read_bytes()

    def crash_midway(image: sitk.Image, filename: str, useCompression: bool) -> None:
        Path(filename).write_bytes(b"half a volume")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", crash_midway)
    with pytest.raises(DataError, match="cannot be written.*disk full"):
        write_image(_volume(seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["image.nii.gz"]


def test_write_rejects_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported file type"):
        write_image(_volume(), tmp_path / "image.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("a.nii.gz", ".nii.gz"), ("A.NII.GZ", ".nii.gz"), ("a.nii", ".nii"), ("a.seg.nrrd", ".seg.nrrd"), ("a.nrrd", ".nrrd"), ("x.y.mha", ".mha")],
)
def test_image_suffix(name: str, suffix: str) -> None:
    assert image_suffix(Path("/data") / name) == suffix


@pytest.mark.parametrize("name", ["a.dcm", "a", "a.nii.gz.bak", ".nii.gz"])
def test_image_suffix_rejects_unsupported_names(name: str) -> None:
    with pytest.raises(DataError) as info:
        image_suffix(name)
    assert info.value.file == name and ".nii.gz" in info.value.fix


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_image(tmp_path / "absent.nii.gz")
    assert info.value.file.endswith("absent.nii.gz")


def test_read_corrupt_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a volume" * 50)
    with pytest.raises(DataError, match="cannot be read") as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: ") and "Fix:" in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_read_rejects_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    write_image(_volume(), path)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.9)])
    with pytest.raises(DataError, match="truncated|cannot be read|corrupt") as info:
        read_image(path)
    assert info.value.file == str(path)


def test_read_rejects_nifti_whose_data_ends_early(tmp_path: Path) -> None:
    path = tmp_path / "short.nii.gz"
    write_image(_volume(), path)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match="is truncated: .* header declares"):
        read_image(path)


@pytest.mark.parametrize(
    ("image", "dimension"),
    [(sitk.Image([16, 16], sitk.sitkFloat32), "2D"), (sitk.Image([8, 8, 4, 3], sitk.sitkFloat32), "4D")],
)
def test_read_rejects_non_3d(tmp_path: Path, image: sitk.Image, dimension: str) -> None:
    path = tmp_path / "volume.nrrd"
    write_image(image, path)
    with pytest.raises(DataError, match=f"is {dimension}.*a 3D volume is needed"):
        read_image(path)


def test_read_squeezes_single_frame_4d(tmp_path: Path) -> None:
    path = tmp_path / "volume.mha"
    write_image(sitk.Image([8, 6, 4, 1], sitk.sitkInt16), path)
    assert read_image(path).GetSize() == (8, 6, 4)


def test_read_rejects_multi_component_image(tmp_path: Path) -> None:
    path = tmp_path / "rgb.nrrd"
    write_image(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), path)
    with pytest.raises(DataError, match="3 components per voxel"):
        read_image(path)


def test_single_layer_seg_nrrd_reads_as_label_volume(tmp_path: Path) -> None:
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[3:5, 2:4, 2:4] = 2
    header = _SEG_HEADER.format(
        dimension=3, sizes="4 5 6", directions="(1,0,0) (0,1,0) (0,0,2)", kinds="domain domain domain", second_layer=0
    )
    image = read_image(_write_nrrd(tmp_path / "seg.seg.nrrd", header, labels))
    assert image.GetNumberOfComponentsPerPixel() == 1 and image.GetDimension() == 3
    assert image.GetSpacing() == (1.0, 1.0, 2.0) and image.GetOrigin() == (10.0, 20.0, 30.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    assert not any(key.startswith("Segment") for key in image.GetMetaDataKeys())


def test_one_layer_4d_seg_nrrd_reads_as_label_volume(tmp_path: Path) -> None:
    labels = np.zeros((6, 5, 4, 1), np.uint8)
    labels[2:4, 1:3, 1:3] = 1
    header = _SEG_HEADER.format(
        dimension=4, sizes="1 4 5 6", directions="none (1,0,0) (0,1,0) (0,0,2)", kinds="list domain domain domain", second_layer=0
    )
    image = read_image(_write_nrrd(tmp_path / "seg.seg.nrrd", header, labels))
    assert image.GetSize() == (4, 5, 6) and image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels[..., 0])


def test_multi_layer_seg_nrrd_asks_for_labelmap_export(tmp_path: Path) -> None:
    layers = np.zeros((6, 5, 4, 2), np.uint8)
    layers[1:4, 1:4, 1:4, 0] = 1
    layers[2:5, 2:4, 2:4, 1] = 2
    header = _SEG_HEADER.format(
        dimension=4, sizes="2 4 5 6", directions="none (1,0,0) (0,1,0) (0,0,2)", kinds="list domain domain domain", second_layer=1
    )
    path = _write_nrrd(tmp_path / "overlap.seg.nrrd", header, layers)
    with pytest.raises(DataError, match="2 layers") as info:
        read_image(path)
    assert info.value.file == str(path) and "labelmap" in info.value.fix


@pytest.mark.parametrize(("suffix", "expected"), [(".nii", "nifti"), (".nii.gz", "nifti"), (".nrrd", "nrrd"), (".mha", "mha")])
def test_sniff_format_recognises_written_files(tmp_path: Path, suffix: str, expected: str) -> None:
    path = tmp_path / f"v{suffix}"
    write_image(_volume(), path)
    assert sniff_format(path.read_bytes()[:1024]) == expected


def test_sniff_format_handles_gzip_and_rejects_other_bytes(tmp_path: Path) -> None:
    path = tmp_path / "v.nii"
    write_image(_volume(), path)
    assert sniff_format(gzip.compress(path.read_bytes())[:2048]) == "nifti"
    assert sniff_format(gzip.compress(b"hello world" * 100)) is None
    assert sniff_format(b"\x1f\x8b garbage") is None
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + bytes(400)) is None
    assert sniff_format(b"") is None


def test_label_image_like_copies_geometry_as_uint8() -> None:
    reference = _volume()
    labels = np.zeros((8, 16, 16), np.int64)
    labels[2:5, 3:9, 4:12] = 3
    image = label_image_like(labels, reference)
    assert image.GetPixelID() == sitk.sitkUInt8
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((16, 16, 8), np.uint8), "does not match"),
        (np.full((8, 16, 16), 0.5, np.float32), "integers"),
        (np.full((8, 16, 16), 300, np.int32), "0..255"),
        (np.full((8, 16, 16), -1, np.int32), "0..255"),
    ],
)
def test_label_image_like_rejects_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        label_image_like(array, _volume())
