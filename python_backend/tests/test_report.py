"""The HTML audit report on a tiny real store with hand-chosen evaluations (no training, no inference)."""

from __future__ import annotations

import math
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
from matplotlib.colors import to_hex
import numpy as np
import pytest
import SimpleITK as sitk

from dakr.config import ExperimentConfig, apply_overrides
from dakr.data.io import label_image_like, write_image
from dakr.data.site import site_from_pairs
from dakr.evaluation.audit import GAINED, LOST, STILL_WRONG, UNCHANGED, centre_of_mass, change_map
from dakr.evaluation.plots import CHANGE_LUT, LABEL_LUT, label_color
from dakr.evaluation.report import write_report
from dakr.nets import build_network
from dakr.store import EvaluationRecord, Store

LABELS = {"background": 0, "c1": 1, "c2": 2}
SHAPE_ZYX = (6, 24, 24)
SPACING_XYZ = (1.0, 1.0, 2.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OVERRIDES = {
    "net.spatial_dims": 2,
    "net.filters": [4, 8, 16],
    "net.patch_size": [16, 16],
    "train.epochs": 3,
    "train.lr": 0.01,
    "continual.kernel": "linear",
}

#: Hand-chosen Dice (c1, c2) of each version on the two audit cases of each site.
DICE = {
    (1, "siteA"): [(0.90, 0.80), (0.86, 0.74)],
    (1, "siteB"): [(0.60, 0.50), (0.64, 0.46)],
    (1, "siteC"): [(0.40, 0.30), (0.44, 0.36)],
    (2, "siteA"): [(0.80, 0.70), (0.78, 0.72)],
    (2, "siteB"): [(0.92, 0.84), (0.88, 0.80)],
    (2, "siteC"): [(0.52, 0.44), (0.50, 0.42)],
    (3, "siteA"): [(0.70, 0.66), (0.72, 0.64)],
    (3, "siteB"): [(0.84, 0.80), (0.86, 0.78)],
    (3, "siteC"): [(0.90, 0.86), (0.94, 0.82)],
}
#: Hand-chosen HD95 (mm) of class c1 of each audit case; c2 is always 1.5 mm.
HD95_C1 = {(3, "siteA"): [3.0, math.inf], (2, "siteB"): [2.0, 4.0]}


# ---------------------------------------------------------------------- building a store
def _label(shift: int) -> np.ndarray:
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    label[1:5, 4 + shift : 12 + shift, 4:12] = 1
    label[1:5, 12:20, 10 + shift : 20] = 2
    return label


def _image(label: np.ndarray, seed: int) -> sitk.Image:
    array = (label * 100.0 + np.random.default_rng(seed).normal(50.0, 10.0, SHAPE_ZYX)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    return image


def _add_site(store: Store, folder: Path, name: str, seed: int) -> None:
    pairs = []
    for index in range(3):
        label = _label(shift=index)
        image = _image(label, seed + index)
        image_path, label_path = folder / name / f"case{index}_0000.nii.gz", folder / name / f"case{index}.nii.gz"
        write_image(image, image_path)
        write_image(label_image_like(label, image), label_path)
        pairs.append((image_path, label_path))
    store.add_site(name, site_from_pairs(pairs, LABELS), audit_fraction=0.5, seed=seed)


def _add_version(store: Store, parent: int | None, site: str) -> int:
    config = apply_overrides(ExperimentConfig(), OVERRIDES)
    net = build_network(config.net, len(LABELS))
    tensors = {"net." + key: value for key, value in net.state_dict().items()}
    version = store.add_version(
        parent=parent, site=site, strategy="dakr", config=config.to_dict(), seed=0, tensors=tensors, buffer=None
    )
    return version.id


def _record(store: Store, version: int, site: str) -> None:
    cases = [case.case_id for case in store.cases(site, "audit")]
    hd95_c1 = HD95_C1.get((version, site), [1.0, 1.0])
    store.record_evaluations(
        [
            EvaluationRecord(version, site, case_id, {"c1": c1, "c2": c2}, {"c1": hd, "c2": 1.5})
            for case_id, (c1, c2), hd in zip(cases, DICE[(version, site)], hd95_c1)
        ]
    )


def _write_predictions(store: Store, version: int, site: str) -> None:
    """Previous versions predict the truth shifted by 2 voxels; the newest one the truth minus a hole."""
    for case in store.cases(site, "audit"):
        truth_image = sitk.ReadImage(str(case.label_path))
        truth = sitk.GetArrayFromImage(truth_image)
        prediction = truth.copy()
        if version == 3:
            prediction[2, 14:18, 14:18] = 0
        else:
            prediction = np.roll(truth, 2, axis=2)
        write_image(label_image_like(prediction, truth_image), store.prediction_path(version, site, case.case_id))


def _three_stage_store(root: Path) -> Store:
    """Sites A, B, C; versions v1 (A) -> v2 (B) -> v3 (C, active), every version evaluated everywhere."""
    store = Store.init(root / "store")
    for seed, site in enumerate(("siteA", "siteB", "siteC")):
        _add_site(store, root / "raw", site, seed)
    parent = None
    for site in ("siteA", "siteB", "siteC"):
        parent = _add_version(store, parent, site)
    for version, site in DICE:
        _record(store, version, site)
    for site in ("siteA", "siteB", "siteC"):
        for version in (2, 3):
            _write_predictions(store, version, site)
    return store


# ---------------------------------------------------------------------- reading the report
class _ReportParser(HTMLParser):
    """Tables (by id, as rows of cell texts), images and captions (with their innermost section id)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[tuple[str, str]] = []
        self.captions: list[tuple[str, str]] = []
        self.section_text: dict[str, str] = defaultdict(str)
        self._sections: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._sections.append(attributes.get("id") or "")
        elif tag == "table":
            self._table = attributes["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append((self._sections[-1], attributes["src"] or ""))
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._sections.pop()
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append((self._sections[-1], "".join(self._caption)))
            self._caption = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)
        for section in self._sections:
            self.section_text[section] += data


def _parse(index: Path) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _rows(parser: _ReportParser, table_id: str) -> dict[str, list[str]]:
    """Body rows of a table keyed by their first cell, without that cell."""
    return {row[0]: row[1:] for row in parser.tables[table_id][1:]}


def _assert_valid_png(path: Path) -> None:
    assert path.is_file(), f"{path} is referenced but missing"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape[0] > 50


def _assert_points(shown: str, dice: float) -> None:
    """A shown Dice-points value equals ``dice`` up to its one-decimal rounding."""
    assert abs(float(shown) - 100.0 * dice) <= 0.05 + 1e-9, (shown, dice)


def _site_dice(version: int, site: str) -> float:
    return sum((c1 + c2) / 2 for c1, c2 in DICE[(version, site)]) / len(DICE[(version, site)])


# ---------------------------------------------------------------------- tests
def test_change_map_colours_gains_losses_and_other_changes() -> None:
    truth = np.array([[[1, 1, 2, 0, 0]]])
    before = np.array([[[1, 0, 2, 1, 0]]])
    after = np.array([[[0, 1, 2, 2, 0]]])
    assert change_map(truth, before, after).tolist() == [[[LOST, GAINED, UNCHANGED, STILL_WRONG, UNCHANGED]]]


def test_overlays_are_transparent_on_background_and_coloured_by_label_value() -> None:
    assert LABEL_LUT[0, 3] == 0 and CHANGE_LUT[UNCHANGED, 3] == 0
    assert LABEL_LUT[1, 3] > 0 and CHANGE_LUT[GAINED, 3] > 0
    assert to_hex(LABEL_LUT[2, :3]) == label_color(2) != label_color(1)


def test_centre_of_mass_of_foreground_and_of_an_empty_label() -> None:
    label = np.zeros((5, 8, 8), dtype=np.uint8)
    label[3, 2:5, 6] = 1
    assert centre_of_mass(label) == (3, 3, 6)
    assert centre_of_mass(np.zeros((5, 8, 8))) == (2, 4, 4)


def test_report_shows_the_store_numbers_and_valid_figures(tmp_path: Path) -> None:
    store = _three_stage_store(tmp_path)
    index = write_report(store, tmp_path / "report", cases_per_site=2)
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    parser = _parse(index)

    sources = [src for _, src in parser.images]
    assert "dice_matrix.png" in sources
    assert sum(section.startswith("audit-") for section, _ in parser.images) == 6
    for src in [*sources, "summary.png"]:
        _assert_valid_png(index.parent / src)

    dice_rows = _rows(parser, "dice-matrix")
    assert parser.tables["dice-matrix"][0] == ["version", "trained on", "siteA", "siteB", "siteC"]
    for version in (1, 2, 3):
        for column, site in enumerate(("siteA", "siteB", "siteC"), start=1):
            _assert_points(dice_rows[f"v{version}"][column], _site_dice(version, site))

    r = np.array([[_site_dice(v, s) for s in ("siteA", "siteB", "siteC")] for v in (1, 2, 3)])
    accuracy_rows = _rows(parser, "accuracy-matrix")
    for stage in range(3):
        for site in range(3):
            _assert_points(accuracy_rows[str(stage + 1)][site + 1], r[stage, site])
    metrics = {name: row[0] for name, row in _rows(parser, "continual-metrics").items()}
    _assert_points(metrics["ACC"], (r[2, 0] + r[2, 1] + r[2, 2]) / 3)
    _assert_points(metrics["BWT"], ((r[2, 0] - r[0, 0]) + (r[2, 1] - r[1, 1])) / 2)
    _assert_points(metrics["Forgetting"], ((max(r[0, 0], r[1, 0]) - r[2, 0]) + (max(r[0, 1], r[1, 1]) - r[2, 1])) / 2)
    _assert_points(metrics["FWT"], r[1, 2] - r[0, 2])  # sites j >= 3 only: the j = 2 term is zero by construction
    assert metrics["BWT"].startswith("-")
    assert "stage-1 model v1" in parser.section_text["continual"]

    _assert_points(_rows(parser, "class-dice-1")["v1"][1], (0.90 + 0.86) / 2)
    _assert_points(_rows(parser, "class-dice-2")["v3"][3], (0.86 + 0.82) / 2)
    hd95_c1 = _rows(parser, "class-hd95-1")
    assert hd95_c1["v3"][1] == "∞"
    assert float(hd95_c1["v2"][2]) == pytest.approx(3.0)
    assert float(_rows(parser, "class-hd95-2")["v1"][3]) == pytest.approx(1.5)

    captions = dict((caption.split(":")[0], caption) for _, caption in parser.captions if "/" in caption)
    for site in ("siteA", "siteB", "siteC"):
        for case, (before, after) in zip(store.cases(site, "audit"), zip(DICE[(2, site)], DICE[(3, site)])):
            caption = captions[f"{site}/{case.case_id}"]
            assert f"v2 (previous) {100 * sum(before) / 2:.1f}" in caption
            assert f"v3 (new) {100 * sum(after) / 2:.1f}" in caption
            assert "16 lost" in caption

    lineage = _rows(parser, "lineage")
    assert lineage["v3"][:3] == ["v2", "siteC", "dakr"]
    continual = ExperimentConfig().continual
    assert lineage["v3"][4:11] == [
        "3", "0.01", "64 samples / 64.0 MB", str(continual.lambda_cna), str(continual.lambda_cra), "linear", "class_prototype",
    ]
    assert lineage["v1"][0] == "–" and lineage["v3"][-1] == "active"


def test_purged_site_keeps_its_metrics_but_shows_no_images(tmp_path: Path) -> None:
    store = _three_stage_store(tmp_path)
    store.purge_site("siteA")
    parser = _parse(write_report(store, tmp_path / "report"))
    assert "purged" in parser.section_text["audit-siteA"]
    assert not [src for section, src in parser.images if section == "audit-siteA"]
    assert len([src for section, src in parser.images if section.startswith("audit-")]) == 4
    _assert_points(_rows(parser, "dice-matrix")["v3"][1], _site_dice(3, "siteA"))
    _assert_points(_rows(parser, "continual-metrics")["ACC"][0], (_site_dice(3, "siteA") + 0.82 + 0.88) / 3)
    for _, src in parser.images:
        _assert_valid_png(tmp_path / "report" / src)


def test_one_version_store_has_no_previous_version_and_undefined_bwt(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    _add_site(store, tmp_path / "raw", "siteA", 0)
    _add_site(store, tmp_path / "raw", "siteB", 1)
    _add_version(store, None, "siteA")
    _record(store, 1, "siteA")
    for site in ("siteA", "siteB"):
        for case in store.cases(site, "audit"):
            truth = sitk.ReadImage(str(case.label_path))
            write_image(truth, store.prediction_path(1, site, case.case_id))
    index = write_report(store, tmp_path / "report", cases_per_site=1)
    parser = _parse(index)

    assert _rows(parser, "dice-matrix")["v1"][2] == "–"
    _assert_points(_rows(parser, "dice-matrix")["v1"][1], _site_dice(1, "siteA"))
    assert list(_rows(parser, "accuracy-matrix")) == ["1"]
    metrics = {name: row[0] for name, row in _rows(parser, "continual-metrics").items()}
    _assert_points(metrics["ACC"], _site_dice(1, "siteA"))
    assert metrics["BWT"] == metrics["Forgetting"] == metrics["FWT"] == "n/a"
    audit_captions = [caption for section, caption in parser.captions if section.startswith("audit-")]
    assert len(audit_captions) == 2
    assert all("previous" not in caption for caption in audit_captions)
    assert "siteB" in audit_captions[1] and audit_captions[1].endswith("Dice v1 –")
    for src in [src for _, src in parser.images] + ["summary.png"]:
        _assert_valid_png(index.parent / src)
