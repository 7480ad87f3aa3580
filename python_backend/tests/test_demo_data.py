"""Built-in demo data: template tissue labels, geometry, determinism, caching, contrasts, layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nilearn import datasets
from scipy import ndimage

from dakr.data.site import discover_site
from dakr.data.validation import validate_site
from dakr.demo import DEMO_SITES, LABEL_NAMES, SiteProtocol, build_demo_data
from dakr.demo.anatomy import array_to_sitk, hard_labels, nifti_to_sitk, template_fractions
from dakr.demo.build import MANIFEST_NAME, demo_case
from dakr.demo.contrasts import RELAXATION, rician, thick_slices, tissue_signals

RESOLUTION = 4.0
SITES = DEMO_SITES[:2]
CASES = 2


def _build(out: Path, **changes: object) -> list[Path]:
    arguments = {"seed": 0, "resolution_mm": RESOLUTION, "cases_per_site": CASES, "sites": SITES}
    return build_demo_data(out, **{**arguments, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _build(tmp_path_factory.mktemp("demo"))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _cases(site_dir: Path) -> list[tuple[Path, Path]]:
    images = sorted((site_dir / "imagesTr").glob("*_0000.nii.gz"))
    return [(image, site_dir / "labelsTr" / image.name.replace("_0000", "")) for image in images]


def _all_arrays(site_dirs: list[Path]) -> list[np.ndarray]:
    return [_array(path) for site in site_dirs for pair in _cases(site) for path in pair]


def test_template_labels_follow_the_largest_tissue_fraction() -> None:
    fractions, _ = template_fractions()
    labels = hard_labels(fractions)
    gm = datasets.load_mni152_gm_template().get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template().get_fdata(dtype=np.float32)
    mask = ndimage.binary_fill_holes(np.asanyarray(datasets.load_mni152_brain_mask().dataobj) > 0)
    csf = np.clip(mask - gm - wm, 0, 1)
    assert np.array_equal(labels > 0, mask)
    tie = 1e-6  # exact ties (e.g. CSF = GM = 0.494) are broken by float32 rounding
    assert np.all(wm[labels == 3] >= np.maximum(gm, csf)[labels == 3] - tie)
    assert np.all(gm[labels == 2] >= np.maximum(wm, csf)[labels == 2] - tie)
    assert np.all(csf[labels == 1] >= np.maximum(gm, wm)[labels == 1] - tie)
    assert all(np.count_nonzero(labels == value) > 100_000 for value in (1, 2, 3))


def test_written_case_is_the_warped_tissue_maps_and_their_image(demo: list[Path]) -> None:
    subject, image = demo_case(SITES[0], seed=0, case_index=0, resolution_mm=RESOLUTION)
    image_path, label_path = _cases(demo[0])[0]
    written = _array(label_path)
    assert np.array_equal(written, np.transpose(hard_labels(subject.fractions), (2, 1, 0)))
    assert np.array_equal(_array(image_path), np.transpose(image, (2, 1, 0)))
    tissue = np.transpose(subject.fractions, (0, 3, 2, 1))
    for value in (1, 2, 3):
        assert np.all(np.argmax(tissue[:, written == value], axis=0) == value - 1)


def test_geometry_is_the_requested_resolution_and_shared_by_image_and_label(demo: list[Path]) -> None:
    for site in demo:
        for image_path, label_path in _cases(site):
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
            assert image.GetSpacing() == pytest.approx((RESOLUTION,) * 3)
            assert image.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
            for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                assert getattr(image, getter)() == getattr(label, getter)()
            assert all(25 <= n <= 60 for n in image.GetSize())
            corner = np.array(image.TransformIndexToPhysicalPoint([n - 1 for n in image.GetSize()]))
            assert np.all(np.abs(image.GetOrigin()) < 150) and np.all(np.abs(corner) < 150)
            assert label.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkInt16


def test_array_to_sitk_matches_how_itk_reads_the_nifti(tmp_path: Path) -> None:
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 3.0, 1.5])
    affine[:3, 3] = [-10.0, 25.0, 7.5]
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nifti = nib.Nifti1Image(array, affine)
    nib.save(nifti, tmp_path / "reference.nii.gz")
    expected = sitk.ReadImage(str(tmp_path / "reference.nii.gz"))
    converted = nifti_to_sitk(nifti)
    assert converted.GetSpacing() == pytest.approx(expected.GetSpacing())
    assert converted.GetOrigin() == pytest.approx(expected.GetOrigin())
    assert converted.GetDirection() == pytest.approx(expected.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(expected))
    assert array_to_sitk(array, affine).GetOrigin() == pytest.approx((10.0, -25.0, 7.5))


def test_same_seed_gives_identical_arrays_and_another_seed_differs(
    demo: list[Path], tmp_path: Path
) -> None:
    reference = _all_arrays(demo)
    again = _all_arrays(_build(tmp_path / "again"))
    other = _all_arrays(_build(tmp_path / "other", seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(reference, again, strict=True))
    pairs = zip(reference, other, strict=True)
    assert not any(a.shape == b.shape and np.array_equal(a, b) for a, b in pairs)


def test_second_call_reuses_files_and_a_changed_parameter_rebuilds(tmp_path: Path) -> None:
    first = _build(tmp_path, sites=SITES[:1])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert _build(tmp_path, sites=SITES[:1]) == first
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    rebuilt = _build(tmp_path, sites=SITES[:1], cases_per_site=3)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["hash"] != manifest["hash"]
    assert len(_cases(rebuilt[0])) == 3
    assert _cases(first[0])[0][0].stat().st_mtime_ns != mtimes[files.index(_cases(first[0])[0][0])]
    _cases(rebuilt[0])[1][1].unlink()
    _build(tmp_path, sites=SITES[:1], cases_per_site=3)
    assert _cases(rebuilt[0])[1][1].is_file()
    moved = _build(tmp_path, sites=SITES[1:2])
    assert not first[0].exists() and moved[0].is_dir()


def test_grey_white_contrast_flips_between_t1w_and_t2w(demo: list[Path]) -> None:
    for site, protocol in zip(demo, SITES, strict=True):
        signal = tissue_signals(protocol)
        for image_path, label_path in _cases(site):
            image, labels = _array(image_path), _array(label_path)
            gm, wm = image[labels == 2].mean(), image[labels == 3].mean()
            assert (gm > wm) == (signal["GM"] > signal["WM"])
    assert tissue_signals(SITES[0])["WM"] > tissue_signals(SITES[0])["GM"]
    assert tissue_signals(SITES[1])["GM"] > tissue_signals(SITES[1])["WM"]


def test_default_sites_order_tissues_differently() -> None:
    orders = {tuple(sorted(tissue_signals(p), key=tissue_signals(p).get)) for p in DEMO_SITES}
    first, last = tissue_signals(DEMO_SITES[0]), tissue_signals(DEMO_SITES[-1])
    assert len(DEMO_SITES) >= 4 and len(orders) >= 3
    assert (first["GM"] > first["WM"]) != (last["GM"] > last["WM"])


def test_site_folders_follow_the_nnunet_raw_layout(demo: list[Path]) -> None:
    for index, (site, protocol) in enumerate(zip(demo, SITES, strict=True)):
        assert site.name == protocol.name
        meta = json.loads((site / "dataset.json").read_text())
        assert meta["labels"] == LABEL_NAMES == {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
        assert meta["channel_names"] == {"0": protocol.contrast}
        assert meta["numTraining"] == CASES and meta["file_ending"] == ".nii.gz"
        extra = meta["dakr_demo"]
        assert (extra["seed"], extra["resolution_mm"], extra["site_index"]) == (0, RESOLUTION, index)
        assert extra["protocol"]["tr_ms"] == protocol.tr_ms
        pairs = _cases(site)
        assert len(pairs) == CASES and all(label.is_file() for _, label in pairs)
        spec = discover_site(site)
        assert validate_site(spec, None) == LABEL_NAMES


def test_signal_equations_reach_their_physical_limits() -> None:
    relaxed = tissue_signals(replace(DEMO_SITES[1], sequence="spin_echo", tr_ms=1e9, te_ms=1e-9))
    assert relaxed == pytest.approx({name: r.pd for name, r in RELAXATION["3T"].items()})
    gre = tissue_signals(replace(DEMO_SITES[0], tr_ms=1e9, te_ms=1e-9, flip_deg=90.0))
    assert gre == pytest.approx(relaxed)
    csf_t1 = RELAXATION["1.5T"]["CSF"].t1_ms
    nulled = tissue_signals(replace(DEMO_SITES[2], tr_ms=1e9, ti_ms=csf_t1 * np.log(2.0)))
    assert nulled["CSF"] == pytest.approx(0.0, abs=1e-9) and nulled["WM"] > 0.1
    short_tr = tissue_signals(replace(DEMO_SITES[1], tr_ms=500.0, te_ms=10.0))
    assert short_tr["WM"] > short_tr["GM"] > short_tr["CSF"]


def test_thick_slices_blur_only_along_the_slice_axis() -> None:
    noise = np.random.default_rng(0).standard_normal((20, 20, 20)).astype(np.float32)
    thick = thick_slices(noise, axis=1, factor=2.0)
    along = np.abs(np.diff(thick, axis=1)).mean()
    across = np.abs(np.diff(thick, axis=0)).mean()
    assert along < 0.5 * across
    assert thick_slices(noise, axis=1, factor=1.0) is noise


def test_rician_noise_has_the_rayleigh_floor() -> None:
    floor = rician(np.zeros(200_000, dtype=np.float32), 0.1, np.random.default_rng(0))
    assert floor.mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.02)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution_mm": 0.5}, "resolution_mm"),
        ({"cases_per_site": 1}, "cases_per_site"),
        ({"seed": -1}, "seed"),
        ({"sites": [DEMO_SITES[0], DEMO_SITES[0]]}, "unique"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build(tmp_path, **changes)
    assert not any(tmp_path.iterdir())


def test_site_protocol_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="site name"):
        replace(DEMO_SITES[0], name="../escape")
    with pytest.raises(ValueError, match="field"):
        replace(DEMO_SITES[0], field="7T")
    assert isinstance(replace(DEMO_SITES[0], name="my_site"), SiteProtocol)
