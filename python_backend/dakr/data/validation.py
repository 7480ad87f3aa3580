"""Checking a whole site before anything is stored.

:func:`validate_site` reads every volume once and collects every problem (not just the first)
into one :class:`SiteValidationError`, so the user can fix a site in one go and a bad site is
never half-registered.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dakr.data.errors import DataError, SiteValidationError
from dakr.data.io import read_image
from dakr.data.names import MAX_LABEL_VALUE, check_label_names, validate_name
from dakr.data.site import CaseFiles, SiteSpec

#: A site needs at least one training and one audit case.
MIN_CASES = 2
SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-3
_GEOMETRY_FIX = (
    "resample the label map onto the image grid (in Slicer: export the segmentation to a labelmap "
    "with the image as reference geometry)"
)


def validate_site(spec: SiteSpec, label_names: dict[str, int] | None) -> dict[str, int]:
    """Validate every case of ``spec`` and return the label set to use.

    The label set is ``label_names`` (the store's) or the site's own; when both exist they
    must agree; when neither exists it is ``{"background": 0, "label_<v>": v, ...}`` over the
    values seen. Raises :class:`SiteValidationError` listing all problems.
    """
    problems: list[DataError] = []
    location = _site_location(spec)
    labels = _agreed_label_set(spec.label_names, label_names, location, problems)
    if len(spec.cases) < MIN_CASES:
        problems.append(
            DataError(
                location,
                f"the site has {len(spec.cases)} case(s); at least {MIN_CASES} are needed (one to train, one to audit)",
                "add more image/label-map pairs",
            )
        )
    problems.extend(_duplicate_case_ids(spec.cases))
    label_values = [
        (case.label, values) for case in spec.cases if (values := _check_case(case, spec.trusted_root, problems)) is not None
    ]
    if labels is None:
        all_values = sorted(set().union(*(values for _, values in label_values)) - {0})
        labels = {"background": 0, **{f"label_{value}": value for value in all_values}}
    for label_file, values in label_values:
        unknown = sorted(values - set(labels.values()))
        if unknown:
            problems.append(
                DataError(
                    label_file,
                    f"label values {unknown} are not in the label set {labels}",
                    "relabel the map to the site's labels, or correct the labels in dataset.json",
                )
            )
    if problems:
        raise SiteValidationError(problems)
    return labels


def _site_location(spec: SiteSpec) -> str:
    """The folder holding the site's files, to name in site-level problems."""
    folders = {str(path.parent) for case in spec.cases for path in (case.image, case.label)}
    try:
        return os.path.commonpath(folders) if folders else "site"
    except ValueError:
        return "site"


def _agreed_label_set(
    declared: dict[str, int] | None, given: dict[str, int] | None, location: str, problems: list[DataError]
) -> dict[str, int] | None:
    declared = None if declared is None else check_label_names(declared)
    given = None if given is None else check_label_names(given)
    if declared is not None and given is not None and declared != given:
        problems.append(
            DataError(
                location,
                f"the site's label set {declared} differs from the store's {given}",
                "every site of a store must use the same labels: relabel this site or fix its dataset.json",
            )
        )
    return given if given is not None else declared


def _duplicate_case_ids(cases: list[CaseFiles]) -> list[DataError]:
    """Cases sharing an id, also ids equal ignoring case (they would share a folder on macOS and Windows)."""
    by_id: dict[str, list[CaseFiles]] = defaultdict(list)
    for case in cases:
        by_id[case.case_id.casefold()].append(case)
    problems = []
    for group in by_id.values():
        if len(group) < 2:
            continue
        images = ", ".join(str(case.image) for case in group)
        ids = sorted({case.case_id for case in group})
        if len(ids) == 1:
            problem = f"case id {ids[0]!r} is used by {len(group)} images: {images}"
        else:
            problem = f"case ids {', '.join(map(repr, ids))} differ only by upper/lower case (one folder on macOS and Windows): {images}"
        problems.append(DataError(group[0].image, problem, "give every case a unique file name, differing by more than case"))
    return problems


def _check_case(case: CaseFiles, trusted_root: Path | None, problems: list[DataError]) -> set[int] | None:
    """Append the problems of one case; return its label values when they could be read."""
    try:
        validate_name(case.case_id, "case")
    except ValueError as exc:
        problems.append(DataError(case.image, str(exc), "rename the image and label-map files"))
    image = _read_case_file(case.image, case.label, "image", trusted_root, problems)
    label = _read_case_file(case.label, case.image, "label map", trusted_root, problems)
    if image is not None and label is not None:
        problems.extend(_geometry_problems(image, label, case))
    return None if label is None else _label_values(label, case, problems)


def _read_case_file(path: Path, partner: Path, kind: str, trusted_root: Path | None, problems: list[DataError]) -> sitk.Image | None:
    """Read one file of a case (rejecting missing, unreadable, non-3D and non-finite files);
    record the problem if any."""
    if not path.exists() and partner.exists():
        problems.append(DataError(path, f"{kind} missing for {partner.name}", f"add the {kind} as {path.name} or remove {partner.name}"))
        return None
    try:
        return read_image(path, trusted_root=trusted_root)
    except DataError as exc:
        problems.append(exc)
        return None


def _geometry_problems(image: sitk.Image, label: sitk.Image, case: CaseFiles) -> list[DataError]:
    if image.GetSize() != label.GetSize():
        sizes = f"label-map size {_size(label)} differs from image size {_size(image)} ({case.image.name})"
        offset = _grid_offset(label, image)
        if offset is None or not _block_inside(offset, label, image):
            geometries = f"the geometries disagree: label map {_geometry(label)}; image {_geometry(image)}"
            return [DataError(case.label, f"{sizes}; {geometries}", _GEOMETRY_FIX)]
        return [
            DataError(
                case.label,
                f"{sizes}: it covers only a block at voxel offset {offset} of the image grid, as Slicer stores "
                "segmentations cropped to their segments",
                f"{_GEOMETRY_FIX} and save it as .nii.gz or .nrrd",
            )
        ]
    differences = []
    if not np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=SPACING_RTOL, atol=0.0):
        differences.append(f"spacing {_fmt(label.GetSpacing())} vs {_fmt(image.GetSpacing())} mm")
    if np.max(np.abs(np.subtract(label.GetOrigin(), image.GetOrigin()))) > ORIGIN_ATOL_MM:
        differences.append(f"origin {_fmt(label.GetOrigin())} vs {_fmt(image.GetOrigin())} mm")
    if np.max(np.abs(np.subtract(label.GetDirection(), image.GetDirection()))) > DIRECTION_ATOL:
        differences.append(f"direction {_fmt(label.GetDirection())} vs {_fmt(image.GetDirection())}")
    if not differences:
        return []
    return [DataError(case.label, f"label-map geometry differs from image {case.image.name}: {'; '.join(differences)}", _GEOMETRY_FIX)]


def _size(image: sitk.Image) -> str:
    return "x".join(map(str, image.GetSize()))


def _grid_offset(label: sitk.Image, image: sitk.Image) -> tuple[int, ...] | None:
    """Voxel offset of ``label``'s first voxel on ``image``'s grid when both grids line up, else ``None``."""
    same_axes = np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=SPACING_RTOL, atol=0.0) and np.allclose(
        label.GetDirection(), image.GetDirection(), rtol=0.0, atol=DIRECTION_ATOL
    )
    if not same_axes:
        return None
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex(label.GetOrigin()))
    tolerance = ORIGIN_ATOL_MM / np.asarray(image.GetSpacing())
    if np.any(np.abs(index - np.round(index)) > tolerance):
        return None
    return tuple(int(i) for i in np.round(index))


def _block_inside(offset: tuple[int, ...], label: sitk.Image, image: sitk.Image) -> bool:
    """Whether a label grid starting at voxel ``offset`` of the image grid lies wholly inside the image."""
    return all(0 <= start and start + size <= limit for start, size, limit in zip(offset, label.GetSize(), image.GetSize()))


def _geometry(image: sitk.Image) -> str:
    return (
        f"size {_size(image)}, spacing {_fmt(image.GetSpacing())} mm, origin {_fmt(image.GetOrigin())} mm, "
        f"direction {_fmt(image.GetDirection())}"
    )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


def _label_values(label: sitk.Image, case: CaseFiles, problems: list[DataError]) -> set[int] | None:
    voxels = sitk.GetArrayViewFromImage(label)
    if np.issubdtype(voxels.dtype, np.floating):
        bad = voxels[voxels != np.round(voxels)]
        if bad.size:
            problems.append(
                DataError(
                    case.label,
                    f"has {bad.size} non-integer label values (e.g. {bad.flat[0]:g})",
                    "save the label map as a labelmap with an integer type, resampled with nearest-neighbour interpolation",
                )
            )
            return None
    values = {int(value) for value in np.unique(voxels)}
    out_of_range = sorted(value for value in values if not 0 <= value <= MAX_LABEL_VALUE)
    if out_of_range:
        problems.append(DataError(case.label, f"label values {out_of_range} lie outside 0..{MAX_LABEL_VALUE}", "relabel the map with values 0..255"))
        return None
    if values <= {0}:
        problems.append(DataError(case.label, "label map is empty (no foreground voxel)", "segment at least one structure or leave this case out"))
    return values
