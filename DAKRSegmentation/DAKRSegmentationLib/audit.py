"""Auditing forgetting on one stored case: image, ground truth, "before" and "after" segmentations,
the voxels lost (right before, wrong after) and gained, the per-case Dice, and the audit layout:
before and after side by side in linked views, the after segmentation and the lost/gained voxels in
the coronal and 3D views, a flicker that swaps before and after in every view."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import slicer

from . import mrmlio, terminology
from .client import BackendClient, PredictionFile
from .shift import ShiftFlag

#: Slice views of the comparison: before on the left (axial), after on the right (axial) and below (coronal).
BEFORE_VIEW = "Red"
AFTER_VIEW = "Yellow"
CORONAL_VIEW = "Green"
SLICE_VIEWS = (BEFORE_VIEW, AFTER_VIEW, CORONAL_VIEW)
#: Layout name of the first 3D view.
THREE_D_VIEW = "1"
#: Opacity of the uncertainty map over the image in the slice views.
UNCERTAINTY_OPACITY = 0.5
#: Attributes of the after segmentation that keep the case's shift verdict with it in the scene.
SHIFT_ATTRIBUTES = ("DAKR.ShiftScore", "DAKR.ShiftThreshold", "DAKR.OutOfDistribution", "DAKR.NearestSite")


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
    #: Segments ``lost`` and ``gained``.
    regressions: "slicer.vtkMRMLSegmentationNode"
    lost_voxels: int
    gained_voxels: int
    dice_before: float | None
    dice_after: float | None
    #: RAS point the views centre on: the lost voxels, else the gained ones, else the ground truth, else the image.
    focus: tuple[float, float, float]
    #: The after version's shift verdict on the case (``None``: not known yet).
    shift: ShiftFlag | None = None
    #: The after version's voxel-wise uncertainty (normalised entropy, 0-1) on the case's grid.
    uncertainty: "slicer.vtkMRMLScalarVolumeNode | None" = None

    @property
    def nodes(self) -> list:
        nodes = [self.image, self.ground_truth, self.before, self.after, self.regressions]
        return nodes if self.uncertainty is None else [*nodes, self.uncertainty]

    def remove(self) -> None:
        """Remove this case's nodes (and their display nodes) from the scene."""
        for node in self.nodes:
            mrmlio.remove_node(node)


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


def load_audit_files(scene: "slicer.vtkMRMLScene", files: AuditFiles, label_names: dict[str, int],
                     colors: dict[str, tuple[float, float, float]] | None = None) -> AuditCase:
    """Load downloaded audit files as named nodes (GUI thread) and remove the files; segments are
    coloured from ``colors`` (by label name) where given."""
    try:
        return _load(scene, files, label_names, colors or {})
    finally:
        shutil.rmtree(files.folder, ignore_errors=True)


def _load(scene: "slicer.vtkMRMLScene", files: AuditFiles, label_names: dict[str, int],
          colors: dict[str, tuple[float, float, float]]) -> AuditCase:
    prefix = f"{files.site} {files.case_id}"
    image = mrmlio.load_volume(scene, files.image, prefix)
    maps = {
        key: mrmlio.read_volume(scene, path, f"__dakr_{key}_{files.case_id}__", labelmap=True)
        for key, path in (("label", files.label), ("before", files.prediction_before), ("after", files.prediction_after))
    }
    try:
        ground_truth = mrmlio.labelmap_to_segmentation(maps["label"], f"{prefix} ground truth", label_names, image)
        before = mrmlio.labelmap_to_segmentation(maps["before"], f"{prefix} before (v{files.before})", label_names, image)
        after = mrmlio.labelmap_to_segmentation(maps["after"], f"{prefix} after (v{files.after})", label_names, image)
        regressions, lost, gained = mrmlio.regression_segmentation(
            maps["label"], maps["before"], maps["after"], f"{prefix} lost/gained v{files.before}-v{files.after}")
        focus = (mrmlio.mask_centre(maps["label"], lost) or mrmlio.mask_centre(maps["label"], gained)
                 or mrmlio.mask_centre(maps["label"], slicer.util.arrayFromVolume(maps["label"]) > 0)
                 or _volume_centre(image))
    finally:
        for node in maps.values():
            scene.RemoveNode(node)
    for segmentation in (ground_truth, before, after):
        terminology.apply_colors(segmentation, colors)
    for segmentation in (before, after, regressions):
        segmentation.CreateClosedSurfaceRepresentation()
    ground_truth.GetDisplayNode().SetVisibility2DFill(False)
    return AuditCase(files.site, files.case_id, files.before, files.after, image, ground_truth, before, after, regressions,
                     int(lost.sum()), int(gained.sum()), files.dice.get("before"), files.dice.get("after"), focus)


def attach_shift(scene: "slicer.vtkMRMLScene", case: AuditCase, prediction: PredictionFile) -> None:
    """Keep the after version's shift verdict with the case (and as attributes of its after
    segmentation, saved with the scene) and load its uncertainty map as a heat-coloured volume
    named after the case (GUI thread); the file is removed."""
    try:
        uncertainty = mrmlio.load_heat_map(scene, prediction.path,
                                           f"{case.site} {case.case_id} uncertainty (v{case.after_version})")
    finally:
        Path(prediction.path).unlink(missing_ok=True)
    if case.uncertainty is not None:
        mrmlio.remove_node(case.uncertainty)
    flag = prediction.shift
    case.shift, case.uncertainty = flag, uncertainty
    values = (f"{flag.score:.4f}", f"{flag.threshold:.4f}", "true" if flag.out_of_distribution else "false", flag.nearest_site)
    for name, value in zip(SHIFT_ATTRIBUTES, values):
        case.after.SetAttribute(name, value)


def show_uncertainty(scene: "slicer.vtkMRMLScene", case: AuditCase, visible: bool) -> None:
    """The case's uncertainty map as the foreground of the comparison's slice views, or no foreground."""
    volume_id = case.uncertainty.GetID() if visible and case.uncertainty is not None else None
    for name in SLICE_VIEWS:
        composite = _view_node(scene, "vtkMRMLSliceCompositeNode", name)
        if composite is not None:
            composite.SetForegroundVolumeID(volume_id)
            composite.SetForegroundOpacity(UNCERTAINTY_OPACITY)


def _volume_centre(volume: "slicer.vtkMRMLVolumeNode") -> tuple[float, float, float]:
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    return ((bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2)


def show_audit_layout(scene: "slicer.vtkMRMLScene", case: AuditCase) -> None:
    """Four-up layout: before (Red, axial) and after (Yellow, axial) linked side by side, after in the
    coronal (Green) and 3D views; ground truth (outline) in every slice view, lost/gained voxels in all
    views; centred on the case's focus point."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    for name in SLICE_VIEWS:
        slice_node = _view_node(scene, "vtkMRMLSliceNode", name)
        composite = _view_node(scene, "vtkMRMLSliceCompositeNode", name)
        if slice_node is None or composite is None:
            raise RuntimeError(f"the scene has no '{name}' slice view; cannot show the comparison")
        slice_node.SetOrientation("Coronal" if name == CORONAL_VIEW else "Axial")
        composite.SetBackgroundVolumeID(case.image.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
    _show_in(case.ground_truth, _view_ids(scene, SLICE_VIEWS))
    _show_in(case.regressions, _view_ids(scene, SLICE_VIEWS + (THREE_D_VIEW,)))
    show_flicker(scene, case, swapped=False)
    centre_views(scene, case)


def show_flicker(scene: "slicer.vtkMRMLScene", case: AuditCase, swapped: bool) -> None:
    """Before in the left view and after in the others, or (``swapped``) the reverse, so toggling
    flickers every view between the two versions."""
    left, others = _view_ids(scene, (BEFORE_VIEW,)), _view_ids(scene, (AFTER_VIEW, CORONAL_VIEW, THREE_D_VIEW))
    _show_in(case.before, others if swapped else left)
    _show_in(case.after, left if swapped else others)


def set_overlays(case: AuditCase, ground_truth: bool, lost: bool, gained: bool, opacity: float) -> None:
    """Visibility of the ground truth and of the lost and gained segments; opacity of the segmentations."""
    case.ground_truth.GetDisplayNode().SetVisibility(ground_truth)
    display = case.regressions.GetDisplayNode()
    display.SetSegmentVisibility(mrmlio.segment_id(case.regressions, mrmlio.LOST), lost)
    display.SetSegmentVisibility(mrmlio.segment_id(case.regressions, mrmlio.GAINED), gained)
    for segmentation in (case.before, case.after, case.regressions):
        segmentation.GetDisplayNode().SetOpacity(opacity)


def centre_views(scene: "slicer.vtkMRMLScene", case: AuditCase) -> None:
    """Move the comparison's slice views to the case's focus point."""
    for name in SLICE_VIEWS:
        slice_node = _view_node(scene, "vtkMRMLSliceNode", name)
        if slice_node is not None:
            slice_node.JumpSliceByCentering(*case.focus)


def _view_node(scene: "slicer.vtkMRMLScene", class_name: str, layout_name: str):
    return next((node for node in mrmlio.nodes_of_class(scene, class_name) if node.GetLayoutName() == layout_name), None)


def _view_ids(scene: "slicer.vtkMRMLScene", layout_names: tuple[str, ...]) -> list[str]:
    """IDs of the slice and 3D view nodes with these layout names (views the scene lacks are skipped)."""
    nodes = [_view_node(scene, "vtkMRMLSliceNode", name) or _view_node(scene, "vtkMRMLViewNode", name) for name in layout_names]
    return [node.GetID() for node in nodes if node is not None]


def _show_in(segmentation: "slicer.vtkMRMLSegmentationNode", view_ids: list[str]) -> None:
    display = segmentation.GetDisplayNode()
    display.RemoveAllViewNodeIDs()
    for view_id in view_ids:
        display.AddViewNodeID(view_id)
    display.SetVisibility(True)
