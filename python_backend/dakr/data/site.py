"""Describing a site: which image goes with which label map, and the site's label set.

Two sources: a folder in nnU-Net raw layout (``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``, optional ``dataset.json`` with ``"labels": {name: value}``) or an
explicit list of (image, label) pairs. Nothing is read here beyond file names and
``dataset.json``; :func:`dakr.data.validation.validate_site` checks the volumes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from dakr.data.errors import DataError
from dakr.data.io import SUPPORTED_SUFFIXES
from dakr.data.names import check_label_names

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_LAYOUT_FIX = "put images in imagesTr/<case>_0000.nii.gz and label maps in labelsTr/<case>.nii.gz"


@dataclass
class CaseFiles:
    """One case: its id, image file and label-map file (either may be missing on disk)."""

    case_id: str
    image: Path
    label: Path


@dataclass
class SiteSpec:
    """The cases of a site and, when the site declares one, its label set ``{name: value}``.

    ``trusted_root`` is a local folder the user named, inside which a volume's header may point
    to voxel data in another file; ``None`` (uploads, server requests) allows no such file.
    """

    cases: list[CaseFiles]
    label_names: dict[str, int] | None
    trusted_root: Path | None = None


def _stem(path: Path) -> str:
    """File name without its volume suffix (or without everything after the first dot)."""
    name = path.name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name.split(".", 1)[0] or name


def case_id_from_image(path: str | PathLike[str]) -> str:
    """Case id of an image file: its name minus the suffix and minus a trailing ``_0000``."""
    stem = _stem(Path(path))
    match = _CHANNEL.match(stem)
    return match["case"] if match and match["channel"] == "0000" else stem


def site_from_pairs(
    pairs: Iterable[tuple[str | PathLike[str], str | PathLike[str]]],
    label_names: dict[str, int] | None = None,
) -> SiteSpec:
    """Build a site from explicit (image, label) file pairs; case ids come from the image names."""
    cases = [CaseFiles(case_id_from_image(image), Path(image), Path(label)) for image, label in pairs]
    return SiteSpec(cases, None if label_names is None else check_label_names(label_names))


def discover_site(path: str | PathLike[str], *, trusted: bool = False) -> SiteSpec:
    """Read a site folder in nnU-Net raw layout.

    ``trusted`` (for a folder on this machine named by its user, e.g. on the command line)
    lets volume headers point to voxel data in other files inside the folder.

    An image without a label map (or the reverse) becomes a case whose missing partner is
    the expected, non-existent path, so validation can report every such case at once.
    Raises ``DataError`` when the folder layout or ``dataset.json`` is wrong.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "is not a folder", f"pass a site folder in nnU-Net raw layout: {_LAYOUT_FIX}")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(folder, "folder is missing", _LAYOUT_FIX)
    images = _images_by_case(images_dir)
    labels = _labels_by_case(labels_dir)
    cases = []
    for case_id in sorted(images.keys() | labels.keys()):
        case_images = images.get(case_id) or [images_dir / f"{case_id}_0000{_suffix(labels[case_id][0])}"]
        case_labels = labels.get(case_id) or [labels_dir / f"{case_id}{_suffix(images[case_id][0])}"]
        for index in range(max(len(case_images), len(case_labels))):
            image = case_images[min(index, len(case_images) - 1)]
            label = case_labels[min(index, len(case_labels) - 1)]
            cases.append(CaseFiles(case_id, image, label))
    return SiteSpec(cases, _read_dataset_labels(root / "dataset.json"), root if trusted else None)


def _suffix(path: Path) -> str:
    return path.name[len(_stem(path)) :]


def _visible_files(folder: Path) -> list[Path]:
    return [file for file in sorted(folder.iterdir()) if file.is_file() and not file.name.startswith(".")]


def _labels_by_case(labels_dir: Path) -> dict[str, list[Path]]:
    by_case: dict[str, list[Path]] = {}
    for file in _visible_files(labels_dir):
        by_case.setdefault(_stem(file), []).append(file)
    return by_case


def _images_by_case(images_dir: Path) -> dict[str, list[Path]]:
    by_case: dict[str, list[Path]] = {}
    for file in _visible_files(images_dir):
        match = _CHANNEL.match(_stem(file))
        if match and match["channel"] != "0000":
            raise DataError(
                file,
                f"is channel {match['channel']} of a multi-channel case; only single-channel sites are supported",
                "keep only the _0000 image of each case in imagesTr",
            )
        by_case.setdefault(case_id_from_image(file), []).append(file)
    return by_case


def _read_dataset_labels(path: Path) -> dict[str, int] | None:
    """The ``"labels"`` of an nnU-Net ``dataset.json`` (v2 ``{name: value}`` or v1 ``{"value": name}``)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot be read as JSON ({exc})", "fix the JSON syntax or remove dataset.json") from exc
    raw = data.get("labels") if isinstance(data, dict) else None
    if raw is None:
        return None
    if isinstance(raw, dict) and raw and all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in raw.items()):
        raw = {name: int(value) for value, name in raw.items()}
    try:
        return check_label_names(raw)
    except ValueError as exc:
        raise DataError(path, f"invalid \"labels\": {exc}", 'write them as {"background": 0, "<name>": <value>, ...}') from exc
