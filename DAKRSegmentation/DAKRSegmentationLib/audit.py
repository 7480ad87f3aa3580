"""Auditing forgetting on one stored case: image, ground truth, "before" and "after" segmentations,
the voxels that changed, the per-case Dice, and a linked side-by-side view of before and after."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import slicer

from . import mrmlio
from .client import BackendClient

#: Slice views of the side-by-side comparison: before on the left, after on the right.
BEFORE_VIEW = "Red"
AFTER_VIEW = "Yellow"


@dataclass
class AuditCase:
    """The nodes and numbers of one audited case."""

    site: str
    case_id: str
    before_version: int
    after_version: int
    image: "slicer.vtkMRMLScalarVolumeNode"
    ground_truth: "slicer.vtkMRMLSegmentationNode"
    before: "slicer.vtkMRMLSegmentationNode"
    after: "slicer.vtkMRMLSegmentationNode"
    changes: "slicer.vtkMRMLSegmentationNode"
    changed_voxels: int
    dice_before: float | None
    dice_after: float | None
    #: RAS point the views centre on: the changed voxels, else the ground truth, else the image.
    focus: tuple[float, float, float]

    @property
    def nodes(self) -> list:
        return [self.image, self.ground_truth, self.before, self.after, self.changes]

    def remove(self) -> None:
        """Remove this case's nodes (and their display nodes) from the scene."""
        for node in self.nodes:
            scene = node.GetScene()
            if scene is not None:
                scene.RemoveNode(node)


def audit_case_ids(client: BackendClient, site: str) -> list[str]:
    """The stored audit cases of a site, sorted."""
    return sorted(case["case_id"] for case in client.site_cases(site) if case.get("split") == "audit")


@dataclass
class AuditFiles:
    """A stored case and both versions' predictions downloaded into ``folder``, and its Dice."""

    site: str
    case_id: str
    before: int
    after: int
    folder: Path
    image: Path
    label: Path
    prediction_before: Path
    prediction_after: Path
    dice: dict


def download_audit_case(client: BackendClient, site: str, case_id: str, before: int, after: int, work_dir: Path,
                        cancelled: Callable[[], bool] | None = None) -> AuditFiles:
    """Download a case, both predictions and its Dice into a new folder under ``work_dir`` (no MRML:
    safe on a worker thread). The caller removes the folder after loading."""
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=work_dir))
    try:
        get = client.download_case_file
        files = AuditFiles(
            site, case_id, before, after, folder,
            get(site, case_id, "image", folder / "image.nii.gz", cancelled=cancelled),
            get(site, case_id, "label", folder / "label.nii.gz", cancelled=cancelled),
            get(site, case_id, "prediction", folder / f"prediction_v{before}.nii.gz", before, cancelled=cancelled),
            get(site, case_id, "prediction", folder / f"prediction_v{after}.nii.gz", after, cancelled=cancelled),
            client.case_dice(site, case_id, before, after),
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return files


def load_audit_case(client: BackendClient, scene: "slicer.vtkMRMLScene", site: str, case_id: str,
                    before: int, after: int, label_names: dict[str, int], work_dir: Path) -> AuditCase:
    """Download a case and both versions' predictions and load them as named, coloured nodes."""
    return load_audit_files(scene, download_audit_case(client, site, case_id, before, after, work_dir), label_names)


def load_audit_files(scene: "slicer.vtkMRMLScene", files: AuditFiles, label_names: dict[str, int]) -> AuditCase:
    """Load downloaded audit files as named, coloured nodes (GUI thread) and remove the files."""
    try:
        return _load(scene, files, label_names)
    finally:
        shutil.rmtree(files.folder, ignore_errors=True)


def _load(scene: "slicer.vtkMRMLScene", files: AuditFiles, label_names: dict[str, int]) -> AuditCase:
    site, case_id, before, after, dice = files.site, files.case_id, files.before, files.after, files.dice
    image_file, label_file = files.image, files.label
    before_file, after_file = files.prediction_before, files.prediction_after
    prefix = f"{site} {case_id}"
    image = mrmlio.read_volume(scene, image_file, prefix)
    maps = {
        key: mrmlio.read_volume(scene, path, f"__dakr_{key}_{case_id}__", labelmap=True)
        for key, path in (("label", label_file), ("before", before_file), ("after", after_file))
    }
    try:
        ground_truth = mrmlio.labelmap_to_segmentation(maps["label"], f"{prefix} ground truth", label_names, image)
        before_seg = mrmlio.labelmap_to_segmentation(maps["before"], f"{prefix} before (v{before})", label_names, image)
        after_seg = mrmlio.labelmap_to_segmentation(maps["after"], f"{prefix} after (v{after})", label_names, image)
        changes, changed = mrmlio.changed_voxels_segmentation(maps["before"], maps["after"], f"{prefix} changed v{before}-v{after}")
        focus = (mrmlio.mask_centre(maps["before"], changed)
                 or mrmlio.mask_centre(maps["label"], slicer.util.arrayFromVolume(maps["label"]) > 0)
                 or _volume_centre(image))
    finally:
        for node in maps.values():
            scene.RemoveNode(node)
    ground_truth.GetDisplayNode().SetVisibility2DFill(False)
    changes.GetDisplayNode().SetOpacity2DFill(0.8)
    return AuditCase(site, case_id, before, after, image, ground_truth, before_seg, after_seg, changes,
                     int(changed.sum()), dice.get("before"), dice.get("after"), focus)


def _volume_centre(volume: "slicer.vtkMRMLVolumeNode") -> tuple[float, float, float]:
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    return ((bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2)


def show_side_by_side(scene: "slicer.vtkMRMLScene", case: AuditCase) -> None:
    """Side-by-side layout, both views axial and linked: "before" left, "after" right; ground truth
    (outline) and changed voxels in both, centred on the case's focus point."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    views = {}
    for name in (BEFORE_VIEW, AFTER_VIEW):
        slice_node = _view_node(scene, "vtkMRMLSliceNode", name)
        composite = _view_node(scene, "vtkMRMLSliceCompositeNode", name)
        if slice_node is None or composite is None:
            raise RuntimeError(f"the scene has no '{name}' slice view; cannot show the comparison")
        slice_node.SetOrientation("Axial")
        composite.SetBackgroundVolumeID(case.image.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
        views[name] = slice_node
    both = [views[BEFORE_VIEW].GetID(), views[AFTER_VIEW].GetID()]
    _show_in(case.before, [views[BEFORE_VIEW].GetID()])
    _show_in(case.after, [views[AFTER_VIEW].GetID()])
    _show_in(case.ground_truth, both)
    _show_in(case.changes, both)
    centre_views(scene, case)


def centre_views(scene: "slicer.vtkMRMLScene", case: AuditCase) -> None:
    """Move both comparison views to the case's focus point (changed voxels, else labels)."""
    for name in (BEFORE_VIEW, AFTER_VIEW):
        slice_node = _view_node(scene, "vtkMRMLSliceNode", name)
        if slice_node is not None:
            slice_node.JumpSliceByCentering(*case.focus)


def _view_node(scene: "slicer.vtkMRMLScene", class_name: str, layout_name: str):
    nodes = scene.GetNodesByClass(class_name)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetLayoutName() == layout_name:
            return node
    return None


def _show_in(segmentation: "slicer.vtkMRMLSegmentationNode", view_ids: list[str]) -> None:
    display = segmentation.GetDisplayNode()
    display.RemoveAllViewNodeIDs()
    for view_id in view_ids:
        display.AddViewNodeID(view_id)
    display.SetVisibility(True)
