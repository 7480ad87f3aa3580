"""Site discovery and validation: every problem is reported, naming the file and the fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.data import (
    CaseFiles,
    DataError,
    SiteSpec,
    SiteValidationError,
    check_label_names,
    discover_site,
    site_from_pairs,
    validate_name,
    validate_site,
)

SHAPE = (8, 16, 16)
SPACING = (1.0, 1.0, 2.0)
ORIGIN = (3.0, -4.0, 5.0)
LABELS = {"background": 0, "CSF": 1, "GM": 2}


def _image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _intensities(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, shape).astype(np.float32)


def _labels(shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[2:6, 3:9, 3:9] = 1
    labels[3:5, 9:13, 8:12] = 2
    return labels


def _save(image: sitk.Image, path: Path) -> Path:
    """Plain SimpleITK write (fixtures need no atomic, fsynced write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _make_site(root: Path, n_cases: int = 3, labels: dict | None = LABELS) -> Path:
    for index in range(n_cases):
        _save(_image(_intensities(index)), root / "imagesTr" / f"case{index}_0000.nii.gz")
        _save(_image(_labels()), root / "labelsTr" / f"case{index}.nii.gz")
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"name": "demo", "labels": labels}))
    return root


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return _make_site(tmp_path / "site")


def _problems(spec: SiteSpec, label_names: dict[str, int] | None = None) -> list[DataError]:
    with pytest.raises(SiteValidationError) as info:
        validate_site(spec, label_names)
    return info.value.problems


def test_valid_site_returns_its_label_set(site: Path) -> None:
    spec = discover_site(site)
    assert [case.case_id for case in spec.cases] == ["case0", "case1", "case2"]
    assert spec.cases[1] == CaseFiles("case1", site / "imagesTr" / "case1_0000.nii.gz", site / "labelsTr" / "case1.nii.gz")
    assert validate_site(spec, None) == LABELS
    assert validate_site(spec, {"GM": 2, "background": 0, "CSF": 1}) == LABELS


def test_label_set_is_derived_from_values_when_nobody_declares_one(tmp_path: Path) -> None:
    spec = discover_site(_make_site(tmp_path, labels=None))
    assert spec.label_names is None
    assert validate_site(spec, None) == {"background": 0, "label_1": 1, "label_2": 2}


def test_store_label_set_must_agree_with_the_sites(site: Path) -> None:
    problems = _problems(discover_site(site), {"background": 0, "CSF": 1, "WM": 2})
    assert len(problems) == 1
    assert problems[0].file == str(site) and "differs from the store's" in problems[0].problem


def test_store_label_set_applies_to_a_site_without_one(tmp_path: Path) -> None:
    spec = discover_site(_make_site(tmp_path, labels=None))
    problems = _problems(spec, {"background": 0, "CSF": 1})
    assert len(problems) == 3
    assert all("label values [2] are not in the label set" in p.problem for p in problems)


def _write(root: Path, relative: str, array: np.ndarray, **geometry) -> Path:
    return _save(_image(array, **geometry), root / relative)


def _replace_with_garbage(root: Path) -> Path:
    path = root / "imagesTr" / "case1_0000.nii.gz"
    path.write_bytes(b"this is not a volume" * 20)
    return path


def _label_2d(root: Path) -> Path:
    return _save(sitk.GetImageFromArray(_labels()[4]), root / "labelsTr" / "case1.nii.gz")


def _remove(relative: str) -> Callable[[Path], Path]:
    def remove(root: Path) -> Path:
        (root / relative).unlink()
        return root / relative

    return remove


def _with_bad_voxel(value: float) -> Callable[[Path], Path]:
    def spoil(root: Path) -> Path:
        intensities = _intensities(1)
        intensities[4, 5, 6] = value
        return _write(root, "imagesTr/case1_0000.nii.gz", intensities)

    return spoil


def _duplicate_case(root: Path) -> Path:
    _write(root, "imagesTr/case1_0000.nrrd", _intensities(1))
    _write(root, "labelsTr/case1.nrrd", _labels())
    return root / "imagesTr" / "case1_0000.nii.gz"


def _bad_case_name(root: Path) -> Path:
    for folder, name in (("imagesTr", "case1_0000.nii.gz"), ("labelsTr", "case1.nii.gz")):
        (root / folder / name).rename(root / folder / name.replace("case1", "case 1"))
    return root / "imagesTr" / "case 1_0000.nii.gz"


def _non_integer_labels(root: Path) -> Path:
    labels = _labels(dtype=np.float32)
    labels[4, 4, 4] = 0.5
    return _write(root, "labelsTr/case1.nii.gz", labels)


def _label_value(value: int, dtype=np.uint8) -> Callable[[Path], Path]:
    def relabel(root: Path) -> Path:
        labels = _labels(dtype=dtype)
        labels[labels == 2] = value
        return _write(root, "labelsTr/case1.nii.gz", labels)

    return relabel


BREAKERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "unreadable": (_replace_with_garbage, "cannot be read"),
    "non-3D": (_label_2d, "is 2D"),
    "size": (lambda root: _write(root, "labelsTr/case1.nii.gz", _labels(shape=(8, 16, 15))), "size 15x16x8 differs from image size 16x16x8"),
    "spacing": (lambda root: _write(root, "labelsTr/case1.nii.gz", _labels(), spacing=(1.0, 1.0, 2.1)), "spacing (1, 1, 2.1) vs (1, 1, 2)"),
    "origin": (lambda root: _write(root, "labelsTr/case1.nii.gz", _labels(), origin=(3.0, -4.0, 5.5)), "origin"),
    "direction": (
        lambda root: _write(root, "labelsTr/case1.nii.gz", _labels(), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)),
        "direction",
    ),
    "non-integer": (_non_integer_labels, "non-integer label values (e.g. 0.5)"),
    "unknown value": (_label_value(7), "label values [7] are not in the label set"),
    "out of range": (_label_value(300, np.int16), "label values [300] lie outside 0..255"),
    "empty": (lambda root: _write(root, "labelsTr/case1.nii.gz", np.zeros(SHAPE, np.uint8)), "empty"),
    "NaN": (_with_bad_voxel(np.nan), "1 NaN and 0 infinite"),
    "Inf": (_with_bad_voxel(-np.inf), "0 NaN and 1 infinite"),
    "missing label": (_remove("labelsTr/case1.nii.gz"), "label map missing for case1_0000.nii.gz"),
    "missing image": (_remove("imagesTr/case1_0000.nii.gz"), "image missing for case1.nii.gz"),
    "duplicate id": (_duplicate_case, "case id 'case1' is used by 2 images"),
    "bad case name": (_bad_case_name, "invalid case name 'case 1'"),
}


@pytest.mark.parametrize("breaker", BREAKERS.keys())
def test_each_problem_is_reported_with_file_and_fix(site: Path, breaker: str) -> None:
    spoil, expected = BREAKERS[breaker]
    bad_file = spoil(site)
    problems = _problems(discover_site(site))
    assert len(problems) == 1, problems
    assert problems[0].file == str(bad_file)
    assert expected in problems[0].problem
    assert problems[0].fix


def test_cropped_slicer_segmentation_gets_a_specific_fix(site: Path) -> None:
    (site / "labelsTr" / "case1.nii.gz").unlink()
    full = _image(_labels())
    cropped = sitk.RegionOfInterest(full, [10, 8, 4], [3, 2, 2])  # keeps its physical position
    path = _save(cropped, site / "labelsTr" / "case1.seg.nrrd")
    problems = _problems(discover_site(site))
    assert len(problems) == 1 and problems[0].file == str(path)
    assert "covers only a block at voxel offset (3, 2, 2)" in problems[0].problem
    assert "reference geometry" in problems[0].fix


def test_geometry_within_tolerance_is_accepted(site: Path) -> None:
    _write(site, "labelsTr/case1.nii.gz", _labels(), spacing=(1.0, 1.0005, 2.0), origin=(3.004, -4.0, 5.0))
    assert validate_site(discover_site(site), None) == LABELS


def test_fewer_than_two_cases(tmp_path: Path) -> None:
    problems = _problems(discover_site(_make_site(tmp_path, n_cases=1)))
    assert len(problems) == 1
    assert problems[0].file == str(tmp_path) and "at least 2" in problems[0].problem


def test_empty_site(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    assert "has 0 case(s)" in _problems(discover_site(tmp_path))[0].problem


def test_all_problems_are_collected(tmp_path: Path) -> None:
    root = _make_site(tmp_path, n_cases=4)
    breaks = [BREAKERS["unreadable"][0], BREAKERS["empty"][0], _remove("labelsTr/case2.nii.gz")]
    bad_files = [spoil(root) for spoil in breaks]
    _write(root, "imagesTr/case3_0000.nii.gz", _intensities(3) * np.nan)
    with pytest.raises(SiteValidationError) as info:
        validate_site(discover_site(root), {"background": 0, "CSF": 1})
    problems = info.value.problems
    files = {p.file for p in problems}
    assert {str(f) for f in bad_files} | {str(root / "imagesTr/case3_0000.nii.gz")} <= files
    assert str(root) in files  # label set disagrees with dataset.json
    # case1: unreadable image and empty label; case2: no label; case3: NaN image; the site's
    # label set disagrees with the store's; case0 and case3 use label 2, unknown to the store.
    assert len(problems) == 7
    message = str(info.value)
    assert message.startswith("site rejected, 7 problem(s)")
    assert all(str(problem) in message for problem in problems)


def test_data_error_message_format() -> None:
    error = DataError(Path("/d/a.nii.gz"), "is 2D", "save the 3D volume")
    assert str(error) == "/d/a.nii.gz: is 2D. Fix: save the 3D volume"
    assert (error.file, error.problem, error.fix) == ("/d/a.nii.gz", "is 2D", "save the 3D volume")
    assert isinstance(error, ValueError) and isinstance(SiteValidationError([error]), ValueError)


def test_discover_reads_nnunet_v1_labels_and_ignores_hidden_files(tmp_path: Path) -> None:
    root = _make_site(tmp_path, labels={"0": "background", "1": "CSF", "2": "GM"})
    (root / "imagesTr" / ".DS_Store").write_bytes(b"junk")
    spec = discover_site(root)
    assert spec.label_names == LABELS and len(spec.cases) == 3


def test_discover_names_unsupported_files_via_validation(site: Path) -> None:
    (site / "imagesTr" / "notes.txt").write_text("hello")
    problems = _problems(discover_site(site))
    files = {p.file: p.problem for p in problems}
    assert "unsupported file type (.txt)" in files[str(site / "imagesTr" / "notes.txt")]
    assert "label map missing" in files[str(site / "labelsTr" / "notes.txt")]


def test_discover_rejects_multi_channel_cases(site: Path) -> None:
    _write(site, "imagesTr/case0_0001.nii.gz", _intensities())
    with pytest.raises(DataError, match="channel 0001 of a multi-channel case") as info:
        discover_site(site)
    assert info.value.file == str(site / "imagesTr" / "case0_0001.nii.gz")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        (json.dumps({"labels": {"background": 0, "tumour": [1, 2]}}), "region labels"),
        (json.dumps({"labels": {"CSF": 1}}), "no background value 0"),
        (json.dumps({"labels": {"background": 0, "CSF": 1, "GM": 1}}), "distinct"),
    ],
)
def test_discover_rejects_bad_dataset_json(site: Path, content: str, message: str) -> None:
    (site / "dataset.json").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        discover_site(site)
    assert info.value.file == str(site / "dataset.json")


def test_discover_rejects_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        discover_site(tmp_path / "absent")
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(DataError, match="folder is missing") as info:
        discover_site(tmp_path)
    assert info.value.file == str(tmp_path / "labelsTr")


def test_site_from_pairs_takes_case_ids_from_image_names(site: Path) -> None:
    pairs = [
        (site / "imagesTr" / "case0_0000.nii.gz", site / "labelsTr" / "case0.nii.gz"),
        (str(site / "imagesTr" / "case1_0000.nii.gz"), str(site / "labelsTr" / "case1.nii.gz")),
    ]
    spec = site_from_pairs(pairs, {"CSF": 1, "background": 0})
    assert [case.case_id for case in spec.cases] == ["case0", "case1"]
    assert spec.cases[1].label == site / "labelsTr" / "case1.nii.gz"
    assert list(spec.label_names) == ["background", "CSF"]
    assert [c.case_id for c in site_from_pairs([("/x/brain.seg.nrrd", "/y/l.nrrd"), ("/x/a_0001.mha", "/y/b.mha")]).cases] == ["brain", "a_0001"]
    problems = _problems(spec)
    assert [p.file for p in problems] == [str(site / "labelsTr" / f"case{i}.nii.gz") for i in (0, 1)]
    assert all("label values [2] are not in the label set" in p.problem for p in problems)


@pytest.mark.parametrize("name", ["site1", "A", "case_01.v2-b", "x" * 64])
def test_validate_name_accepts_safe_names(name: str) -> None:
    assert validate_name(name, "site") == name


@pytest.mark.parametrize("name", ["", "..", "../etc", "/abs", "a/b", "a\\b", ".hidden", "-x", "x" * 65, "a b", "é", "a\n", 3])
def test_validate_name_rejects_unsafe_names(name: object) -> None:
    with pytest.raises(ValueError, match="invalid site name"):
        validate_name(name, "site")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "message"),
    [({}, "non-empty mapping"), ({"": 0}, "non-empty string"), ({"background": 0, "a": True}, "integers"), ({"background": 0, "a": 256}, "0..255")],
)
def test_check_label_names_rejects_bad_sets(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_label_names(raw)
