"""MRML nodes ⇄ image files, and labelmaps ⇄ segmentation nodes.

MRML keeps geometry in RAS; image files on disk (NIfTI, NRRD, as ITK and the backend read them)
are LPS. The conversion happens in exactly one place: Slicer's volume archetype storage node,
which every read and write in this module goes through. Nothing here flips an axis by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

#: Colours (RGB, 0..1) of label values 1, 2, ...; repeats after the last one.
LABEL_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.30, 0.24),
    (0.18, 0.64, 0.87),
    (0.96, 0.77, 0.19),
    (0.36, 0.75, 0.38),
    (0.62, 0.40, 0.80),
    (0.95, 0.55, 0.20),
    (0.20, 0.80, 0.75),
    (0.85, 0.45, 0.65),
)
#: ``vtkSlicerVolumesLogic`` loading option: read one file, not a series.
_SINGLE_FILE = 4
#: Segments of the regression overlay and their colours (as in the HTML report): voxels that were
#: right before and are wrong after, and the reverse.
LOST, GAINED = "lost", "gained"
REGRESSION_COLORS = {LOST: (0.84, 0.15, 0.16), GAINED: (0.17, 0.63, 0.17)}
#: Name of the colour table of heat maps (uncertainty): black, red, yellow, white from low to high.
HEAT_COLORS = "DAKR heat"
_HEAT_STOPS = ((0.0, (0.0, 0.0, 0.0)), (0.4, (0.85, 0.1, 0.0)), (0.8, (1.0, 0.85, 0.0)), (1.0, (1.0, 1.0, 1.0)))


def label_color(value: int) -> tuple[float, float, float]:
    """The display colour of a label value (> 0)."""
    return LABEL_COLORS[(value - 1) % len(LABEL_COLORS)]


@dataclass
class ScenePair:
    """A case of a new site taken from the scene: an image volume and its labels."""

    case_id: str
    volume: "slicer.vtkMRMLScalarVolumeNode"
    labels: "slicer.vtkMRMLSegmentationNode | slicer.vtkMRMLLabelMapVolumeNode"


def case_id_from_name(name: str, taken: set[str] | None = None) -> str:
    """A backend-valid case id (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``) from a node name, unique in ``taken``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:56] or "case"
    candidate, counter = cleaned, 2
    while taken and candidate in taken:
        candidate = f"{cleaned}_{counter}"
        counter += 1
    return candidate


def nodes_of_class(scene: "slicer.vtkMRMLScene", class_name: str) -> list:
    """The nodes of a class in ``scene``. Like ``slicer.util.getNodesByClass`` (the collection the
    scene returns is released, so nothing leaks), but for the given scene: Slicer's helper reads
    ``slicer.mrmlScene`` whatever scene it is given."""
    collection = scene.GetNodesByClass(class_name)
    collection.UnRegister(None)
    return [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]


def find_scene_pairs(scene: "slicer.vtkMRMLScene") -> list[ScenePair]:
    """Pair each image volume with its labels: a segmentation whose reference geometry is the volume,
    else a labelmap named like the volume plus a ``-label``/``_seg`` style suffix."""
    volumes = [
        node for node in nodes_of_class(scene, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode")
    ]
    segmentations = nodes_of_class(scene, "vtkMRMLSegmentationNode")
    labelmaps = nodes_of_class(scene, "vtkMRMLLabelMapVolumeNode")
    pairs: list[ScenePair] = []
    taken: set[str] = set()
    for volume in volumes:
        labels = next(
            (seg for seg in segmentations
             if seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume),
            None,
        )
        if labels is None:
            suffixes = ("-label", "_label", " label", "-seg", "_seg", " segmentation", "-segmentation")
            labels = next(
                (lab for lab in labelmaps if any(lab.GetName() == volume.GetName() + s for s in suffixes)),
                None,
            )
        if labels is not None:
            case_id = case_id_from_name(volume.GetName(), taken)
            taken.add(case_id)
            pairs.append(ScenePair(case_id, volume, labels))
    return pairs


# -- writing ---------------------------------------------------------------------------------
def write_volume(volume: "slicer.vtkMRMLVolumeNode", path: Path) -> Path:
    """Write a scalar or labelmap volume to ``path`` (LPS on disk) through a storage node."""
    if volume.GetImageData() is None:
        raise ValueError(f"volume '{volume.GetName()}' has no image data. Fix: load or create the image first")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)
    if not storage.WriteData(volume):
        raise OSError(f"cannot write '{volume.GetName()}' to {path}. Fix: choose a writable folder")
    return Path(path)


def segment_label_values(segmentation: "slicer.vtkMRMLSegmentationNode", label_names: dict[str, int]) -> dict[str, int]:
    """Map each segment ID to its label value by segment name (case-insensitive) in ``label_names``."""
    by_lower = {name.lower(): value for name, value in label_names.items() if value != 0}
    values: dict[str, int] = {}
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(index)
        name = segments.GetNthSegment(index).GetName()
        if name.lower() not in by_lower:
            known = ", ".join(name for name, value in sorted(label_names.items(), key=lambda item: item[1]) if value)
            raise ValueError(
                f"segment '{name}' of '{segmentation.GetName()}' is not one of the model's labels ({known}). "
                "Fix: rename the segment in Segment Editor to the matching label name, or delete it"
            )
        values[segment_id] = by_lower[name.lower()]
    if not values:
        raise ValueError(f"'{segmentation.GetName()}' has no segments. Fix: segment the structures first")
    return values


def write_labels(labels: "slicer.vtkMRMLSegmentationNode | slicer.vtkMRMLLabelMapVolumeNode",
                 reference: "slicer.vtkMRMLScalarVolumeNode", path: Path,
                 label_names: dict[str, int] | None = None) -> Path:
    """Write a case's labels as a label map file on the grid of ``reference``.

    A labelmap volume on another grid is resampled to it (nearest neighbour; outside its extent is 0).
    A segmentation is exported on the reference grid; segment names give the label values through
    ``label_names``.
    """
    if labels.IsA("vtkMRMLLabelMapVolumeNode"):
        if same_geometry(labels, reference):
            return write_volume(labels, path)
        scene = labels.GetScene()
        resampled = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dakr_resampled__")
        try:
            matrix = vtk.vtkMatrix4x4()
            reference.GetIJKToRASMatrix(matrix)
            resampled.SetIJKToRASMatrix(matrix)
            slicer.util.updateVolumeFromArray(resampled, resample_labels(labels, reference))
            return write_volume(resampled, path)
        finally:
            scene.RemoveNode(resampled)
    if label_names is None:
        raise ValueError("label names are needed to write a segmentation as a label map")
    values = segment_label_values(labels, label_names)
    colors = slicer.vtkMRMLColorTableNode()
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(values.values()) + 1)
    segments = labels.GetSegmentation()
    for segment_id, value in values.items():
        colors.SetColor(value, segments.GetSegment(segment_id).GetName(), *label_color(value), 1.0)
    segment_ids = vtk.vtkStringArray()
    for segment_id in values:
        segment_ids.InsertNextValue(segment_id)
    scene = labels.GetScene()
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dakr_export__")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            labels, segment_ids, exported, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
        if not ok:
            raise ValueError(f"cannot export '{labels.GetName()}' on the grid of '{reference.GetName()}'")
        return write_volume(exported, path)
    finally:
        scene.RemoveNode(exported)


def resample_labels(labels: "slicer.vtkMRMLLabelMapVolumeNode", reference: "slicer.vtkMRMLVolumeNode") -> np.ndarray:
    """``labels`` on the grid of ``reference`` as a (k, j, i) array: for each reference voxel the label
    voxel its centre falls in (nearest neighbour, so values stay labels); 0 outside. Slice by slice."""
    source = slicer.util.arrayFromVolume(labels)
    dims = reference.GetImageData().GetDimensions()
    ijk_to_ras, ras_to_ijk = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ijk_to_ras)
    labels.GetRASToIJKMatrix(ras_to_ijk)
    combined = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(ras_to_ijk, ijk_to_ras, combined)
    to_source = np.array([[combined.GetElement(r, c) for c in range(4)] for r in range(4)])
    j, i = np.mgrid[0:dims[1], 0:dims[0]]
    out = np.zeros((dims[2], dims[1], dims[0]), dtype=source.dtype)
    for k in range(dims[2]):
        points = np.stack([i.ravel(), j.ravel(), np.full(i.size, k), np.ones(i.size)])
        si, sj, sk = np.rint(to_source @ points)[:3].astype(np.int64)
        inside = (si >= 0) & (si < source.shape[2]) & (sj >= 0) & (sj < source.shape[1]) & (sk >= 0) & (sk < source.shape[0])
        plane = np.zeros(i.size, dtype=source.dtype)
        plane[inside] = source[sk[inside], sj[inside], si[inside]]
        out[k] = plane.reshape(dims[1], dims[0])
    return out


def label_names_from_segmentations(segmentations: list["slicer.vtkMRMLSegmentationNode"]) -> dict[str, int]:
    """A label set for a first site: segment names in order of first appearance get values 1, 2, ..."""
    names: dict[str, int] = {"background": 0}
    lowered: set[str] = {"background"}
    for segmentation in segmentations:
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            name = segments.GetNthSegment(index).GetName()
            if name.lower() not in lowered:
                lowered.add(name.lower())
                names[name] = len(names)
    return names


# -- reading ---------------------------------------------------------------------------------
def volumes_logic(scene: "slicer.vtkMRMLScene") -> "slicer.vtkSlicerVolumesLogic":
    """Slicer's Volumes module logic; where the application is absent (PyPI ``slicer-core``), a volumes
    logic bound to ``scene`` with the Colors logic it needs for display nodes."""
    volumes = getattr(getattr(slicer, "modules", None), "volumes", None)
    if volumes is not None:
        return volumes.logic()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(application)
    colors.SetMRMLScene(scene)
    application.SetModuleLogic("Colors", colors)
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLApplicationLogic(application)
    logic.SetMRMLScene(scene)
    logic.dakr_owned = (application, colors)  # the application logic does not keep its module logics alive
    return logic


def load_volume(scene: "slicer.vtkMRMLScene", path: Path, name: str) -> "slicer.vtkMRMLScalarVolumeNode":
    """Load an image as Slicer's Add Data does (display and storage nodes, window/level), for nodes the
    user keeps. The file is temporary: the node is marked modified so that Save writes its data."""
    node = volumes_logic(scene).AddArchetypeVolume(str(path), name, _SINGLE_FILE)
    if node is None:
        raise OSError(f"cannot read image {path}. Fix: check that the file is a readable NIfTI/NRRD image")
    node.StorableModified()
    return node


def heat_color_table(scene: "slicer.vtkMRMLScene") -> "slicer.vtkMRMLColorTableNode":
    """The scene's heat colour table (:data:`HEAT_COLORS`), created on first use: 256 colours from
    black through red and yellow to white."""
    existing = scene.GetFirstNodeByName(HEAT_COLORS)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEAT_COLORS)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    positions = [stop for stop, _ in _HEAT_STOPS]
    for index in range(256):
        t = index / 255
        rgb = [float(np.interp(t, positions, [color[channel] for _, color in _HEAT_STOPS])) for channel in range(3)]
        table.SetColor(index, f"{t:.3f}", *rgb, 1.0)
    return table


def load_heat_map(scene: "slicer.vtkMRMLScene", path: Path, name: str, minimum: float = 0.0,
                  maximum: float = 1.0) -> "slicer.vtkMRMLScalarVolumeNode":
    """Load a map of values in ``[minimum, maximum]`` (e.g. normalised entropy) as a scalar volume shown
    with the heat colour table over exactly that window."""
    node = load_volume(scene, path, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(heat_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(minimum, maximum)
    return node


def remove_node(node: "slicer.vtkMRMLNode") -> None:
    """Remove a node with its display and storage nodes (the scene leaves those behind otherwise)."""
    scene = node.GetScene()
    if scene is None:
        return
    helpers = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene:
            scene.RemoveNode(helper)


def read_volume(scene: "slicer.vtkMRMLScene", path: Path, name: str, labelmap: bool = False) -> "slicer.vtkMRMLVolumeNode":
    """Read an image file into a new bare scalar (or labelmap) volume node (RAS in memory; no display
    or storage node: for intermediate nodes that are removed again)."""
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if labelmap:
        storage.SetSingleFile(1)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise OSError(f"cannot read image {path}. Fix: check that the file is a readable NIfTI/NRRD image")
    return node


def labelmap_to_segmentation(labelmap: "slicer.vtkMRMLLabelMapVolumeNode", name: str,
                             label_names: dict[str, int], reference: "slicer.vtkMRMLVolumeNode | None" = None,
                             ) -> "slicer.vtkMRMLSegmentationNode":
    """A new segmentation node with one segment per foreground label, named and coloured by label value.

    Labels absent from the map still get an (empty) segment so that segmentations of the same case
    list the same segments; values outside ``label_names`` are named ``label_<value>``.
    """
    scene = labelmap.GetScene()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference or labelmap)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        scene.RemoveNode(segmentation)
        raise ValueError(f"cannot import label map '{labelmap.GetName()}' as a segmentation")
    names_by_value = {value: label for label, value in label_names.items() if value != 0}
    segments = segmentation.GetSegmentation()
    present: set[int] = set()
    for index in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(index)
        value = segment.GetLabelValue()
        present.add(value)
        segment.SetName(names_by_value.get(value, f"label_{value}"))
        segment.SetColor(*label_color(value))
    for value in sorted(set(names_by_value) - present):
        segments.AddEmptySegment(names_by_value[value], names_by_value[value], label_color(value))
    return segmentation


def import_labelmap_file(scene: "slicer.vtkMRMLScene", path: Path, name: str, label_names: dict[str, int],
                         reference: "slicer.vtkMRMLVolumeNode | None" = None) -> "slicer.vtkMRMLSegmentationNode":
    """Read a label map file and return it as a segmentation node named ``name``."""
    labelmap = read_volume(scene, path, f"__dakr_{name}__", labelmap=True)
    try:
        return labelmap_to_segmentation(labelmap, name, label_names, reference)
    finally:
        scene.RemoveNode(labelmap)


def regression_segmentation(truth: "slicer.vtkMRMLLabelMapVolumeNode", before: "slicer.vtkMRMLLabelMapVolumeNode",
                            after: "slicer.vtkMRMLLabelMapVolumeNode", name: str,
                            ) -> tuple["slicer.vtkMRMLSegmentationNode", np.ndarray, np.ndarray]:
    """A segmentation with segments ``lost`` (right before, wrong after) and ``gained`` (wrong before,
    right after), and those two masks as (k, j, i) arrays. All three label maps must share one grid."""
    for other in (before, after):
        if not same_geometry(truth, other):
            raise ValueError(f"'{truth.GetName()}' and '{other.GetName()}' are not on the same grid; cannot compare them voxel-wise")
    truth_array = slicer.util.arrayFromVolume(truth)
    right_before = slicer.util.arrayFromVolume(before) == truth_array
    right_after = slicer.util.arrayFromVolume(after) == truth_array
    lost, gained = right_before & ~right_after, ~right_before & right_after
    codes = np.zeros(truth_array.shape, dtype=np.uint8)
    codes[lost], codes[gained] = 1, 2
    scene = truth.GetScene()
    mask = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"__dakr_{name}__")
    try:
        matrix = vtk.vtkMatrix4x4()
        truth.GetIJKToRASMatrix(matrix)
        mask.SetIJKToRASMatrix(matrix)
        slicer.util.updateVolumeFromArray(mask, codes)
        segmentation = labelmap_to_segmentation(mask, name, {LOST: 1, GAINED: 2}, truth)
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            segment.SetColor(*REGRESSION_COLORS[segment.GetName()])
        return segmentation, lost, gained
    finally:
        scene.RemoveNode(mask)


def segment_id(segmentation: "slicer.vtkMRMLSegmentationNode", name: str) -> str:
    """The ID of the segment called ``name``."""
    segment = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    if not segment:
        raise KeyError(f"'{segmentation.GetName()}' has no segment '{name}'")
    return segment


def mask_centre(volume: "slicer.vtkMRMLVolumeNode", mask: np.ndarray) -> tuple[float, float, float] | None:
    """RAS centre of the true voxels of a (k, j, i) mask on ``volume``'s grid; ``None`` if empty."""
    if not mask.any():
        return None
    k, j, i = np.argwhere(mask).mean(axis=0)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return tuple(float(v) for v in matrix.MultiplyPoint((i, j, k, 1.0))[:3])


def same_geometry(a: "slicer.vtkMRMLVolumeNode", b: "slicer.vtkMRMLVolumeNode", tolerance: float = 1e-4) -> bool:
    """Whether two volumes have the same dimensions and IJK→RAS matrix."""
    if a.GetImageData() is None or b.GetImageData() is None:
        return False
    if a.GetImageData().GetDimensions() != b.GetImageData().GetDimensions():
        return False
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASMatrix(ma)
    b.GetIJKToRASMatrix(mb)
    return all(abs(ma.GetElement(i, j) - mb.GetElement(i, j)) <= tolerance for i in range(4) for j in range(4))
