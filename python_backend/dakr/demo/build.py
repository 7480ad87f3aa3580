"""Build the multi-site demo data set in the nnU-Net raw layout, deterministically and cached.

Layout: ``<out>/<site>/imagesTr/<case>_0000.nii.gz``, ``<out>/<site>/labelsTr/<case>.nii.gz`` and
``<out>/<site>/dataset.json``; ``<out>/dakr_demo_manifest.json`` records the parameters' hash so
that a second call with the same parameters returns at once and any change rebuilds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dakr.data.io import write_image
from dakr.data.names import validate_name
from dakr.demo.anatomy import (
    LABEL_NAMES,
    TEMPLATE_LICENCE,
    TEMPLATE_REFERENCE,
    Deformation,
    TissueVolume,
    antialiased_template,
    array_to_sitk,
    crop_to_brain,
    hard_labels,
    output_grid,
    random_subject,
)
from dakr.demo.contrasts import DEMO_SITES, RELAXATION, SiteProtocol, synthesize_image, tissue_signals

#: Bump when the generator changes its output, so cached demo data is rebuilt.
GENERATOR_VERSION = 1
MANIFEST_NAME = "dakr_demo_manifest.json"
FILE_ENDING = ".nii.gz"
_GRID_MARGIN_MM = 20.0
_CROP_MARGIN_MM = 6.0
_RESOLUTION_RANGE_MM = (1.0, 8.0)


def build_demo_data(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    resolution_mm: float = 3.0,
    cases_per_site: int = 8,
    sites: Sequence[SiteProtocol] | None = None,
) -> list[Path]:
    """Write (or reuse) the demo sites under ``out_dir``; return the site folders in sequence order.

    Every case is a random smooth deformation of the MNI ICBM152 2009a template, imaged with the
    site's protocol; labels are 0 background, 1 CSF, 2 GM, 3 WM. The same arguments give
    identical files; a call whose arguments match the manifest in ``out_dir`` rewrites nothing,
    any other call replaces the site folders (``out_dir`` belongs to the builder).
    """
    protocols = tuple(DEMO_SITES if sites is None else sites)
    _check_arguments(seed, resolution_mm, cases_per_site, protocols)
    out = Path(out_dir)
    parameters = _parameters(seed, resolution_mm, cases_per_site, protocols)
    site_dirs = [out / protocol.name for protocol in protocols]
    if _is_cached(out, parameters):
        return site_dirs
    out.mkdir(parents=True, exist_ok=True)
    _forget_previous_build(out)
    files: list[str] = []
    for index, protocol in enumerate(protocols):
        cases = _write_site(out, protocol, index, parameters)
        files += [f"{protocol.name}/{name}" for name in cases]
    sites_written = [protocol.name for protocol in protocols]
    manifest = {"hash": _hash(parameters), "sites": sites_written, "files": files, "parameters": parameters}
    _write_json_atomic(out / MANIFEST_NAME, manifest)
    return site_dirs


def _check_arguments(
    seed: int, resolution_mm: float, cases_per_site: int, protocols: tuple[SiteProtocol, ...]
) -> None:
    """Raise ValueError naming the bad argument and its valid range."""
    low, high = _RESOLUTION_RANGE_MM
    if not low <= resolution_mm <= high:
        raise ValueError(f"resolution_mm={resolution_mm}: use a value between {low} and {high} mm")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: use a non-negative integer")
    if cases_per_site < 2:
        raise ValueError(f"cases_per_site={cases_per_site}: a site needs at least 2 cases")
    if not protocols or not all(isinstance(p, SiteProtocol) for p in protocols):
        raise ValueError("sites: give a non-empty sequence of SiteProtocol (e.g. a slice of DEMO_SITES)")
    names = [p.name for p in protocols]
    if len(set(names)) != len(names):
        raise ValueError(f"sites: site names must be unique, got {names}")


def _parameters(
    seed: int, resolution_mm: float, cases_per_site: int, protocols: tuple[SiteProtocol, ...]
) -> dict[str, Any]:
    """Everything that determines the output, as JSON-ready values."""
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "resolution_mm": float(resolution_mm),
        "cases_per_site": cases_per_site,
        "deformation": asdict(Deformation()),
        "sites": [asdict(p) for p in protocols],
    }


def _hash(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_cached(out: Path, parameters: dict[str, Any]) -> bool:
    """True when the manifest matches the parameters and all files it lists exist."""
    manifest = _read_manifest(out)
    if manifest is None or manifest.get("hash") != _hash(parameters):
        return False
    return all((out / name).is_file() for name in manifest.get("files", []))


def _forget_previous_build(out: Path) -> None:
    """Drop the manifest (an interrupted build is then never reused) and the sites it listed."""
    manifest = _read_manifest(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in manifest.get("sites", []) if manifest else []:
        shutil.rmtree(out / validate_name(name, "site"), ignore_errors=True)


def case_rng(seed: int, site_name: str, case_index: int) -> np.random.Generator:
    """Random generator of one case: depends on the seed, the site name and the case index."""
    return np.random.default_rng([seed, zlib.crc32(site_name.encode()), case_index])


@functools.lru_cache(maxsize=2)
def _grid(resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output grid shared by all cases at a resolution (cached; the affine is read-only)."""
    shape, affine = output_grid(antialiased_template(resolution_mm), resolution_mm, _GRID_MARGIN_MM)
    affine.setflags(write=False)
    return shape, affine


def demo_case(
    protocol: SiteProtocol, *, seed: int, case_index: int, resolution_mm: float
) -> tuple[TissueVolume, np.ndarray]:
    """One case in memory: the subject's tissue maps (cropped) and its int16 image (X, Y, Z).

    Its labels are ``hard_labels(subject.fractions)``; its geometry is ``subject.affine`` (RAS).
    """
    rng = case_rng(seed, protocol.name, case_index)
    resolution_mm = float(resolution_mm)
    shape, affine = _grid(resolution_mm)
    subject = random_subject(antialiased_template(resolution_mm), shape, affine, rng)
    subject = crop_to_brain(subject, _CROP_MARGIN_MM)
    return subject, synthesize_image(protocol, subject, rng)


def _write_site(out: Path, protocol: SiteProtocol, index: int, parameters: dict[str, Any]) -> list[str]:
    """Write one site into a temporary folder, then move it into place; return its file names."""
    partial = out / f".{protocol.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "imagesTr").mkdir(parents=True)
    (partial / "labelsTr").mkdir()
    files = []
    for case_index in range(parameters["cases_per_site"]):
        case_id = f"{protocol.name}_{case_index:03d}"
        subject, image = demo_case(
            protocol, seed=parameters["seed"], case_index=case_index,
            resolution_mm=parameters["resolution_mm"],
        )
        image_name = f"imagesTr/{case_id}_0000{FILE_ENDING}"
        label_name = f"labelsTr/{case_id}{FILE_ENDING}"
        write_image(array_to_sitk(image, subject.affine), partial / image_name)
        write_image(array_to_sitk(hard_labels(subject.fractions), subject.affine), partial / label_name)
        files += [image_name, label_name]
    _write_json_atomic(partial / "dataset.json", _dataset_json(protocol, index, parameters))
    target = out / protocol.name
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return [*files, "dataset.json"]


def _dataset_json(protocol: SiteProtocol, index: int, parameters: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net v2 dataset.json of a site, with the generator's parameters under "dakr_demo"."""
    return {
        "name": protocol.name,
        "description": f"DAKR synthetic demo site {index + 1}: {protocol.contrast} at {protocol.field}",
        "reference": TEMPLATE_REFERENCE,
        "licence": TEMPLATE_LICENCE,
        "channel_names": {"0": protocol.contrast},
        "labels": dict(LABEL_NAMES),
        "numTraining": parameters["cases_per_site"],
        "file_ending": FILE_ENDING,
        "dakr_demo": {
            "generator_version": GENERATOR_VERSION,
            "seed": parameters["seed"],
            "resolution_mm": parameters["resolution_mm"],
            "site_index": index,
            "protocol": asdict(protocol),
            "relaxation": {name: asdict(r) for name, r in RELAXATION[protocol.field].items()},
            "tissue_signals": tissue_signals(protocol),
            "deformation": parameters["deformation"],
        },
    }


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(path)
