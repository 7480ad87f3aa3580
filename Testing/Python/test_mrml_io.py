"""MRML nodes ⇄ files on the real MRML data layer (PyPI slicer-core): LPS on disk, RAS in memory,
label values by segment name, segmentations with the right names, colours and geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from DAKRSegmentationLib import mrmlio, testing


def _ras_of_ijk(volume, ijk) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])


def _export_on(segmentation, reference) -> np.ndarray:
    """All segments of a segmentation as one label array on ``reference``'s grid (values from segments' label values)."""
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    segments = segmentation.GetSegmentation()
    colors = slicer.vtkMRMLColorTableNode()
    colors.SetTypeToUser()
    colors.SetNumberOfColors(16)
    for index in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(index)
        ids.InsertNextValue(segments.GetNthSegmentID(index))
        colors.SetColor(segment.GetLabelValue(), segment.GetName(), 1, 1, 1, 1)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
    array = slicer.util.arrayFromVolume(labelmap).copy()
    scene.RemoveNode(labelmap)
    return array


def test_volume_is_written_in_lps_with_the_same_voxels(scene, tmp_path: Path) -> None:
    image, _ = testing.phantom_arrays(seed=1)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "img")
    volume.SetSpacing(1.5, 2.0, 3.0)
    volume.SetOrigin(10.0, -20.0, 30.0)
    slicer.util.updateVolumeFromArray(volume, image)

    path = mrmlio.write_volume(volume, tmp_path / "img.nii.gz")

    on_disk = sitk.ReadImage(str(path))
    assert on_disk.GetSize() == image.shape[::-1]
    assert on_disk.GetSpacing() == pytest.approx((1.5, 2.0, 3.0))
    # identity IJK→RAS directions become diag(-1, -1, 1) in LPS; x and y of the origin flip sign
    assert on_disk.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert on_disk.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_disk), image)


def test_file_written_by_itk_is_read_into_ras(scene, tmp_path: Path) -> None:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1, 2, 3] = 2
    itk_image = sitk.GetImageFromArray(labels)
    itk_image.SetSpacing((1.5, 2.0, 3.0))
    itk_image.SetOrigin((5.0, 6.0, 7.0))
    itk_image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    sitk.WriteImage(itk_image, str(tmp_path / "l.nii.gz"))

    node = mrmlio.read_volume(scene, tmp_path / "l.nii.gz", "l", labelmap=True)

    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    k, j, i = np.argwhere(slicer.util.arrayFromVolume(node) == 2)[0]
    lps = np.array(itk_image.TransformIndexToPhysicalPoint((3, 2, 1)))
    np.testing.assert_allclose(_ras_of_ijk(node, (i, j, k)), lps * [-1, -1, 1], atol=1e-6)


def test_segmentation_is_written_on_the_volume_grid_with_values_by_segment_name(scene, tmp_path: Path) -> None:
    volume, segmentation = testing.add_phantom_case(scene, "case", seed=3)
    _, labels = testing.phantom_arrays(seed=3)

    mrmlio.write_volume(volume, tmp_path / "case_0000.nii.gz")
    mrmlio.write_labels(segmentation, volume, tmp_path / "case.nii.gz", {"background": 0, "core": 5, "SHELL": 1})

    image_file = sitk.ReadImage(str(tmp_path / "case_0000.nii.gz"))
    label_file = sitk.ReadImage(str(tmp_path / "case.nii.gz"))
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(label_file, attribute)() == pytest.approx(getattr(image_file, attribute)())
    expected = np.where(labels == 2, 5, labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label_file), expected)


def test_segment_not_in_the_label_set_is_refused_with_the_fix(scene, tmp_path: Path) -> None:
    volume, segmentation = testing.add_phantom_case(scene, "case", seed=3)
    with pytest.raises(ValueError, match=r"segment 'core' of 'case segmentation' is not one of the model's labels \(shell, CSF\).*Fix: rename"):
        mrmlio.write_labels(segmentation, volume, tmp_path / "x.nii.gz", {"background": 0, "CSF": 2, "shell": 1})


def test_labelmap_file_becomes_named_coloured_segmentation_on_the_image_grid(scene, tmp_path: Path) -> None:
    image, labels = testing.phantom_arrays(seed=4)
    itk_labels = sitk.GetImageFromArray(labels)
    itk_labels.SetSpacing((1.2, 1.1, 2.5))
    itk_labels.SetOrigin((3.0, -4.0, 5.0))
    itk_labels.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    itk_image = sitk.GetImageFromArray(image)
    itk_image.CopyInformation(itk_labels)
    sitk.WriteImage(itk_labels, str(tmp_path / "labels.nii.gz"))
    sitk.WriteImage(itk_image, str(tmp_path / "image.nii.gz"))
    volume = mrmlio.read_volume(scene, tmp_path / "image.nii.gz", "image")
    names = {"background": 0, "shell": 1, "core": 2, "lesion": 3}

    segmentation = mrmlio.import_labelmap_file(scene, tmp_path / "labels.nii.gz", "result", names, volume)

    assert segmentation.GetName() == "result"
    segments = segmentation.GetSegmentation()
    found = {segments.GetNthSegment(i).GetName(): segments.GetNthSegment(i) for i in range(segments.GetNumberOfSegments())}
    assert set(found) == {"shell", "core", "lesion"}  # absent label 3 still gets an (empty) segment
    assert found["shell"].GetColor() == pytest.approx(mrmlio.label_color(1))
    assert found["core"].GetColor() == pytest.approx(mrmlio.label_color(2))
    assert found["lesion"].GetColor() == pytest.approx(mrmlio.label_color(3))
    assert mrmlio.label_color(1) != mrmlio.label_color(2)
    # geometry: exported back on the image grid, the voxels are those of the file
    np.testing.assert_array_equal(_export_on(segmentation, volume), labels)
    # the image grid is the file geometry in RAS: LPS origin (3, -4, 5) is RAS (-3, 4, 5)
    np.testing.assert_allclose(_ras_of_ijk(volume, (0, 0, 0)), [-3.0, 4.0, 5.0], atol=1e-6)
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0, "temporary labelmap left behind"


def test_segmentation_to_file_and_back_is_identical(scene, tmp_path: Path) -> None:
    volume, segmentation = testing.add_phantom_case(scene, "case", seed=8, spacing=(0.9, 1.3, 2.0), origin=(7.0, 8.0, -9.0))
    names = testing.SYNTHETIC_LABELS
    mrmlio.write_labels(segmentation, volume, tmp_path / "case.nii.gz", names)

    back = mrmlio.import_labelmap_file(scene, tmp_path / "case.nii.gz", "back", names, volume)

    np.testing.assert_array_equal(_export_on(back, volume), _export_on(segmentation, volume))


def test_lost_and_gained_voxels_are_their_own_segments_on_the_grid(scene) -> None:
    _, truth = testing.phantom_arrays(seed=5)
    nodes = {}
    for name in ("truth", "before", "after"):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        nodes[name].SetSpacing(1.0, 2.0, 3.0)
        nodes[name].SetOrigin(1.0, 2.0, 3.0)
    before, after = truth.copy(), truth.copy()
    after[6, 10:13, 10] = 3           # right before, wrong after: lost
    before[4, 5:7, 5] = 2             # wrong before, right after: gained
    before[2, 1, 1] = after[2, 1, 1] = 1 if truth[2, 1, 1] != 1 else 2   # wrong in both: neither
    for name, array in (("truth", truth), ("before", before), ("after", after)):
        slicer.util.updateVolumeFromArray(nodes[name], array)
    expected_lost = (before == truth) & (after != truth)
    expected_gained = (before != truth) & (after == truth)
    assert expected_lost.sum() == 3 and expected_gained.sum() >= 1

    segmentation, lost, gained = mrmlio.regression_segmentation(nodes["truth"], nodes["before"], nodes["after"], "lost/gained")

    np.testing.assert_array_equal(lost, expected_lost)
    np.testing.assert_array_equal(gained, expected_gained)
    segments = segmentation.GetSegmentation()
    for name, mask in ((mrmlio.LOST, expected_lost), (mrmlio.GAINED, expected_gained)):
        segment_id = mrmlio.segment_id(segmentation, name)
        assert segments.GetSegment(segment_id).GetColor() == pytest.approx(mrmlio.REGRESSION_COLORS[name])
        exported = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation, segment_id)
        assert int((exported == segments.GetSegment(segment_id).GetLabelValue()).sum()) == int(mask.sum())
    centre = mrmlio.mask_centre(nodes["truth"], lost)
    k, j, i = np.argwhere(expected_lost).mean(axis=0)
    np.testing.assert_allclose(centre, _ras_of_ijk(nodes["truth"], (i, j, k)))


def test_lost_and_gained_refuses_different_grids(scene) -> None:
    nodes = [scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name) for name in ("truth", "before", "after")]
    for node in nodes:
        slicer.util.updateVolumeFromArray(node, np.zeros((3, 4, 5), np.uint8))
    nodes[2].SetSpacing(2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="not on the same grid"):
        mrmlio.regression_segmentation(*nodes, "lost/gained")


def test_nodes_of_class_reads_the_given_scene_and_releases_the_collection(scene) -> None:
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "l")
    assert mrmlio.nodes_of_class(scene, "vtkMRMLLabelMapVolumeNode")[0].GetName() == "l"
    assert len(mrmlio.nodes_of_class(scene, "vtkMRMLScalarVolumeNode")) == 2, "a labelmap is a scalar volume too"
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    before = collection.GetReferenceCount()
    collection.UnRegister(None)
    assert before == 2 and collection.GetReferenceCount() == 1, "GetNodesByClass returns one reference too many"
    assert volume in mrmlio.nodes_of_class(scene, "vtkMRMLScalarVolumeNode")


def test_scene_pairs_by_reference_geometry_and_by_labelmap_name(scene) -> None:
    volume_a, segmentation_a = testing.add_phantom_case(scene, "patient 1 (T1)", seed=1)
    volume_b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "patient2")
    labelmap_b = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "patient2-label")
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "unlabelled")

    pairs = mrmlio.find_scene_pairs(scene)

    assert [(p.case_id, p.volume, p.labels) for p in pairs] == [
        ("patient_1_T1", volume_a, segmentation_a),
        ("patient2", volume_b, labelmap_b),
    ]


def test_case_ids_are_valid_and_unique() -> None:
    assert mrmlio.case_id_from_name("../../etc passwd") == "etc_passwd"
    assert mrmlio.case_id_from_name("***") == "case"
    assert mrmlio.case_id_from_name("a b", taken={"a_b", "a_b_2"}) == "a_b_3"
    assert len(mrmlio.case_id_from_name("x" * 200)) <= 64


def test_first_site_label_names_follow_segment_order(scene) -> None:
    _, first = testing.add_phantom_case(scene, "one", seed=1)
    _, second = testing.add_phantom_case(scene, "two", seed=2)
    second.GetSegmentation().AddEmptySegment("Lesion", "Lesion", (1.0, 0.0, 0.0))
    assert mrmlio.label_names_from_segmentations([first, second]) == {"background": 0, "shell": 1, "core": 2, "Lesion": 3}


def test_a_labelmap_on_another_grid_is_resampled_to_the_image_grid(scene, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 4, size=(4, 6, 5), dtype=np.uint8)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "coarse labels")
    labels.SetSpacing(2.0, 2.0, 2.0)
    labels.SetOrigin(0.5, 0.5, 0.5)
    slicer.util.updateVolumeFromArray(labels, source)
    image = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    slicer.util.updateVolumeFromArray(image, np.zeros((9, 12, 12), np.float32))

    written = mrmlio.write_labels(labels, image, tmp_path / "labels.nii.gz")

    k, j, i = np.indices((9, 12, 12))
    inside = (i < 10) & (j < 12) & (k < 8)
    expected = np.zeros((9, 12, 12), np.uint8)
    expected[inside] = source[k[inside] // 2, j[inside] // 2, i[inside] // 2]
    stored = sitk.ReadImage(str(written))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), expected)
    assert stored.GetSize() == (12, 12, 9) and stored.GetSpacing() == (1.0, 1.0, 1.0)


def test_a_labelmap_on_the_image_grid_is_written_as_it_is(scene, tmp_path: Path) -> None:
    _, labels_array = testing.phantom_arrays(seed=3)
    volume, _ = testing.add_phantom_case(scene, "p", seed=3)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "p-label")
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    labels.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labels, labels_array)
    written = mrmlio.write_labels(labels, volume, tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))), labels_array)


def test_a_loaded_image_has_display_and_storage_nodes_and_is_removed_with_them(scene, tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(3, 4, 5)), str(tmp_path / "i.nii.gz"))
    def volume_nodes() -> int:
        return sum(len(mrmlio.nodes_of_class(scene, name)) for name in
                   ("vtkMRMLVolumeNode", "vtkMRMLVolumeDisplayNode", "vtkMRMLStorageNode"))

    before = volume_nodes()
    node = mrmlio.load_volume(scene, tmp_path / "i.nii.gz", "image")
    assert node.GetDisplayNode() is not None and node.GetStorageNode() is not None
    assert node.GetModifiedSinceRead(), "the file is temporary: Save must write the data"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), np.arange(60).reshape(3, 4, 5))
    assert volume_nodes() == before + 3
    mrmlio.remove_node(node)
    assert volume_nodes() == before
    with pytest.raises(OSError, match="cannot read image"):
        mrmlio.load_volume(scene, tmp_path / "missing.nii.gz", "x")
