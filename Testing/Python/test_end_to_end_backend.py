"""End to end against the real backend (``python -m dakr serve`` on loopback) with phantom sites:
scene nodes → files → backend → adapt → results table → audit case nodes. Trains two tiny models."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

import slicer_gui_doubles as doubles
from conftest import REPO
from DAKRSegmentationLib import audit, gate, mrmlio, results, shift
from DAKRSegmentationLib.backend import LocalBackend
from DAKRSegmentationLib.client import BackendError
from DAKRSegmentationLib.session import AdaptSettings, Session
from DAKRSegmentationLib.testing import SYNTHETIC_LABELS, TINY_TRAINING, add_phantom_case

pytestmark = pytest.mark.slow


@pytest.fixture
def local_backend(tmp_path: Path, backend_python: str):
    backend = LocalBackend(backend_python, tmp_path / "store", REPO / "python_backend", tmp_path / "run")
    backend.start()
    try:
        backend.wait_until_ready(timeout_s=120)
        yield backend
    finally:
        backend.stop()
        assert not backend.running()


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _export(segmentation, reference, label_names: dict[str, int]) -> np.ndarray:
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    colors = slicer.vtkMRMLColorTableNode()
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(label_names.values()) + 1)
    ids = vtk.vtkStringArray()
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        ids.InsertNextValue(segments.GetNthSegmentID(index))
        name = segments.GetNthSegment(index).GetName()
        colors.SetColor(label_names[name], name, 1, 1, 1, 1)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
    array = slicer.util.arrayFromVolume(labelmap).copy()
    scene.RemoveNode(labelmap)
    return array


def _view(scene, class_name: str, layout_name: str):
    nodes = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
    return next(node for node in nodes if node.GetLayoutName() == layout_name)


def test_scene_to_backend_to_audit(scene, local_backend: LocalBackend, tmp_path: Path) -> None:
    session = Session(local_backend.client(), scene, tmp_path / "work")
    first_volume = None
    for site_index, (site, contrast) in enumerate((("SiteA", 1.0), ("SiteB", 0.55))):
        pairs = []
        for case_index in range(5):
            name = f"{site}-{case_index}"
            volume, segmentation = add_phantom_case(scene, name, seed=10 * site_index + case_index, contrast=contrast,
                                                    origin=(-20.0 + case_index, -18.0, -15.0))
            first_volume = first_volume or volume
            pairs.append(mrmlio.ScenePair(name, volume, segmentation))
        registered = session.register_site_from_scene(site, pairs)
        assert registered["n_train"] + registered["n_audit"] == 5 and registered["n_audit"] >= 1
        session.refresh()
        assert session.label_names == SYNTHETIC_LABELS  # first site's segment names became the model's labels

        monitor = session.start_adapt(site, "dakr", AdaptSettings(epochs=1, buffer_samples=8, extra=TINY_TRAINING))
        update = monitor.wait(timeout_s=600, interval_s=0.5)
        assert update.state == "succeeded", "\n".join([str(update.error)] + session.client.job_log(monitor.job_id, 40))
        assert update.result["version"] == site_index + 1
        outcome = update.result["gate"]

    # The gate judged v2 against v1 on SiteA's audit cases; whatever it said, a reviewer signs it off.
    assert outcome["version"] == 2 and outcome["verdict"] in ("accepted", "held")
    if outcome["verdict"] == "held":
        assert "SiteA" in outcome["failing_sites"] and not outcome["activated"]
    approved = gate.approve(session.client, 2, "tiny test model, reviewed by the end-to-end test")
    assert approved["active"] and approved["status"] == "approved"

    # the stored image of a case is the scene volume: same voxels, same RAS geometry
    stored = session.client.download_case_file("SiteA", "SiteA-0", "image", tmp_path / "a0.nii.gz")
    stored_node = mrmlio.read_volume(scene, stored, "stored")
    np.testing.assert_allclose(_matrix(stored_node), _matrix(first_volume), atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(stored_node), slicer.util.arrayFromVolume(first_volume))

    # results table: the backend's numbers, and BWT per METHOD.md on the lineage v1 -> v2
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    plot_table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    models = session.client.models()
    assert session.default_versions(models) == (1, 2)
    comparison = session.update_results(1, 2, table, plot_table, chart)
    matrix = session.client.evaluation_matrix()
    dice = {(v, s): matrix["dice"][i][j] for i, v in enumerate(matrix["versions"]) for j, s in enumerate(matrix["sites"])}
    sites = table.GetTable().GetColumnByName(results.SITE_COLUMN)
    before = table.GetTable().GetColumnByName(results.BEFORE_COLUMN)
    after = table.GetTable().GetColumnByName(results.AFTER_COLUMN)
    for row in range(len(matrix["sites"])):
        site = sites.GetValue(row)
        assert before.GetValue(row) == pytest.approx(100 * dice[(1, site)])  # the table shows Dice points
        assert after.GetValue(row) == pytest.approx(100 * dice[(2, site)])
    assert comparison.bwt == pytest.approx(dice[(2, "SiteA")] - dice[(1, "SiteA")])
    assert chart.GetNumberOfPlotSeriesNodes() == 2

    # audit one case of the first site: v1 (before) vs v2 (after)
    case_id = audit.audit_case_ids(session.client, "SiteA")[0]
    case = session.load_audit_case("SiteA", case_id, 1, 2)
    assert case.before.GetName() == f"SiteA {case_id} before (v1)" and case.after.GetName() == f"SiteA {case_id} after (v2)"
    for segmentation in (case.ground_truth, case.before, case.after):
        segments = segmentation.GetSegmentation()
        by_name = {segments.GetNthSegment(i).GetName(): segments.GetNthSegment(i) for i in range(segments.GetNumberOfSegments())}
        assert set(by_name) == {"shell", "core"}
        assert by_name["core"].GetColor() == pytest.approx(mrmlio.label_color(2))
    files = {}
    for kind, version in (("label", None), ("prediction", 1), ("prediction", 2)):
        path = session.client.download_case_file("SiteA", case_id, kind, tmp_path / f"{kind}{version}.nii.gz", version)
        files[(kind, version)] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(_export(case.ground_truth, case.image, SYNTHETIC_LABELS), files[("label", None)])
    np.testing.assert_array_equal(_export(case.before, case.image, SYNTHETIC_LABELS), files[("prediction", 1)])
    np.testing.assert_array_equal(_export(case.after, case.image, SYNTHETIC_LABELS), files[("prediction", 2)])
    truth, first, second = files[("label", None)], files[("prediction", 1)], files[("prediction", 2)]
    assert case.lost_voxels == int(((first == truth) & (second != truth)).sum())
    assert case.gained_voxels == int(((first != truth) & (second == truth)).sum())
    backend_dice = session.client.case_dice("SiteA", case_id, 1, 2)
    assert (case.dice_before, case.dice_after) == (backend_dice["before"], backend_dice["after"])

    audit.show_audit_layout(scene, case)
    for name in ("Red", "Yellow", "Green"):
        assert _view(scene, "vtkMRMLSliceCompositeNode", name).GetBackgroundVolumeID() == case.image.GetID()
    red = _view(scene, "vtkMRMLSliceNode", "Red")
    assert case.before.GetDisplayNode().IsDisplayableInView(red.GetID())
    assert not case.after.GetDisplayNode().IsDisplayableInView(red.GetID())

    # site shift: the check of a registered site, the shown case's verdict with its uncertainty map, the labelling order
    check = session.client.site_check("SiteB")
    assert (check["site"], check["version"], check["known_sites"]) == ("SiteB", 2, ["SiteA", "SiteB"])
    assert shift.site_check_text(check).startswith("Site SiteB (v2): Looks like site ") and check["verdict"].endswith(
        "adapt" if check["adapt_recommended"] else "adaptation optional")
    prediction = session.fetch_case_uncertainty("SiteA", case_id, 2)
    assert prediction.shift.threshold > 0 and prediction.shift.nearest_site in ("SiteA", "SiteB")
    audit.attach_shift(scene, case, prediction)
    entropy = slicer.util.arrayFromVolume(case.uncertainty)
    assert entropy.shape == slicer.util.arrayFromVolume(case.image).shape and 0.0 <= entropy.min() <= entropy.max() <= 1.0
    np.testing.assert_allclose(_matrix(case.uncertainty), _matrix(case.image), atol=1e-4)
    assert case.after.GetAttribute("DAKR.ShiftScore") == f"{prediction.shift.score:.4f}"
    other = session.client.download_case_file("SiteB", "SiteB-0", "image", tmp_path / "b0.nii.gz")
    ranked = session.client.rank_images([stored, other])
    assert sorted(item["rank"] for item in ranked) == [1, 2] and {item["path"] for item in ranked} == {"a0.nii.gz", "b0.nii.gz"}
    assert all(item["reason"] for item in ranked)

    # a second site under an existing name is refused by the backend with its message
    with pytest.raises(BackendError, match="already registered"):
        session.register_site_from_scene("SiteA", [mrmlio.ScenePair("x", first_volume, case.ground_truth)] * 2)


def test_in_slicer_self_test_runs_under_the_doubles(monkeypatch, scene, tmp_path: Path, backend_python: str) -> None:
    """DAKRSegmentationTest.runTest() ("Reload and Test" in Slicer) with this venv's Python as PythonSlicer."""
    env = doubles.install(monkeypatch, scene, tmp_path / "slicer-temp")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python_slicer = bin_dir / "PythonSlicer"
    python_slicer.write_text(f'#!/bin/sh\nexec "{backend_python}" "$@"\n')
    python_slicer.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    torch_utils = types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setenv("DAKR_HEAVY_SELF_TEST", "1")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: torch_utils))
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)
    module = importlib.import_module("DAKRSegmentation")

    module.DAKRSegmentationTest().runTest()

    assert env.unhandled == [] and env.dialogs.errors == []
    assert not any("needs these Python packages" in text for text in env.dialogs.confirmations), (
        "the test venv already has every backend requirement: the install plan must be empty")
    names = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName()
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert any(name.endswith("after (v2)") for name in names)
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)
