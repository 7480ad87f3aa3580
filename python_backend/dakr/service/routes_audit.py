"""Audit view of a stored case: its image, label map, a version's prediction, its uncertainty map with
the shift verdict, and per-case Dice."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from dakr import pipeline
from dakr.data.io import read_image
from dakr.service.context import (
    ServiceContext,
    case_or_404,
    get_context,
    site_or_404,
    temp_folder,
    version_or_404,
    version_or_active,
)
from dakr.service.schemas import MAX_INT, ActiveOrVersion, CaseDiceOut, CaseStructureDiceOut, ErrorOut
from dakr.service.shift_responses import SHIFT_HEADERS_DOC, shift_file_response
from dakr.shift import predict_with_shift
from dakr.store.aggregate import foreground_dice, mean_skipping_nan

router = APIRouter(tags=["audit"])
_CASE = "/sites/{site}/cases/{case_id}"
_FILE_RESPONSES = {
    200: {"content": {"application/gzip": {}}, "description": "a NIfTI (.nii.gz) volume"},
    400: {"model": ErrorOut, "description": "invalid site or case name"},
    404: {"model": ErrorOut, "description": "unknown site, case or version"},
    410: {"model": ErrorOut, "description": "the site was purged"},
}
_NO_MODEL = {409: {"model": ErrorOut, "description": "no model yet"}}


def _nifti(path: Path, name: str) -> FileResponse:
    return FileResponse(path, media_type="application/gzip", filename=name)


@router.get(_CASE + "/image", response_class=FileResponse, responses=_FILE_RESPONSES, summary="The stored volume of a case")
def case_image(site: str, case_id: str, context: ServiceContext = Depends(get_context)) -> FileResponse:
    record = case_or_404(context.store, site, case_id)
    return _nifti(record.image_path, f"{site}_{case_id}_image.nii.gz")


@router.get(_CASE + "/label", response_class=FileResponse, responses=_FILE_RESPONSES, summary="The stored label map of a case")
def case_label(site: str, case_id: str, context: ServiceContext = Depends(get_context)) -> FileResponse:
    record = case_or_404(context.store, site, case_id)
    return _nifti(record.label_path, f"{site}_{case_id}_label.nii.gz")


@router.get(
    _CASE + "/prediction",
    response_class=FileResponse,
    responses={**_FILE_RESPONSES, **_NO_MODEL},
    summary="A version's prediction for a case (cached after the first request)",
)
def case_prediction(
    site: str,
    case_id: str,
    version: ActiveOrVersion = None,
    context: ServiceContext = Depends(get_context),
) -> FileResponse:
    record = case_or_404(context.store, site, case_id)
    version_id = version_or_active(context.store, version)
    with context.torch_work:
        path = pipeline.audit_prediction(context.store, version_id, record.site, record.case_id)
    return _nifti(path, f"{site}_{case_id}_v{version_id}.nii.gz")


@router.get(
    _CASE + "/uncertainty",
    response_class=FileResponse,
    responses={
        **_FILE_RESPONSES,
        200: {
            "content": {"application/gzip": {}},
            "description": "the voxel-wise normalised entropy (0-1) as NIfTI (.nii.gz) on the stored image's grid; the "
            "headers carry the case's shift verdict, as for POST /predict",
            "headers": SHIFT_HEADERS_DOC,
        },
        **_NO_MODEL,
        422: {"model": ErrorOut, "description": "the case's resampled grid is over the server's limits"},
    },
    summary="A version's uncertainty map and shift verdict for a stored case (computed on each request)",
)
def case_uncertainty(
    site: str,
    case_id: str,
    version: ActiveOrVersion = None,
    context: ServiceContext = Depends(get_context),
) -> FileResponse:
    """What ``POST /predict?output=uncertainty`` answers for the stored image, without uploading it again."""
    record = case_or_404(context.store, site, case_id)
    version_id = version_or_active(context.store, version)
    folder = temp_folder(context.store)
    try:
        with context.torch_work:
            image = read_image(record.image_path)
            result = predict_with_shift(context.store, image, version_id, source=f"case {case_id} of site {site}")
        return shift_file_response(folder, result.uncertainty, f"{site}_{case_id}_v{version_id}_uncertainty.nii.gz", result,
                                   "application/gzip")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@router.get(
    _CASE + "/dice",
    response_model=CaseDiceOut,
    responses={k: v for k, v in _FILE_RESPONSES.items() if k != 200},
    summary="Mean foreground Dice of a case under two versions",
)
def case_dice(
    site: str,
    case_id: str,
    before: Annotated[int, Query(ge=1, le=MAX_INT, description="the earlier version")],
    after: Annotated[int, Query(ge=1, le=MAX_INT, description="the later version")],
    context: ServiceContext = Depends(get_context),
) -> CaseDiceOut:
    """``null`` for a version not evaluated on the case yet (POST /api/v1/models/{id}/evaluate)."""
    case_or_404(context.store, site, case_id, need_files=False)
    for version in (before, after):
        version_or_404(context.store, version)
    return CaseDiceOut(before=_case_dice(context, before, site, case_id), after=_case_dice(context, after, site, case_id))


def _case_dice(context: ServiceContext, version: int, site: str, case_id: str) -> float | None:
    background = {name for name, value in (context.store.label_names or {}).items() if value == 0}
    for record in context.store.evaluations(version, site):
        if record.case_id == case_id:
            return mean_skipping_nan(foreground_dice(record.dice, background).values())
    return None


@router.get(
    "/sites/{site}/audit-dice",
    response_model=list[CaseStructureDiceOut],
    responses={k: v for k, v in _FILE_RESPONSES.items() if k not in (200, 410)},
    summary="Per-structure Dice of every audit case of a site under two versions",
)
def site_audit_dice(
    site: str,
    before: Annotated[int, Query(ge=1, le=MAX_INT, description="the earlier version")],
    after: Annotated[int, Query(ge=1, le=MAX_INT, description="the later version")],
    context: ServiceContext = Depends(get_context),
) -> list[CaseStructureDiceOut]:
    """One row per audit case, sorted by case id, for the module's regression table."""
    site_or_404(context.store, site)
    for version in (before, after):
        version_or_404(context.store, version)
    background = {name for name, value in (context.store.label_names or {}).items() if value == 0}
    by_version = {
        version: {record.case_id: _finite(foreground_dice(record.dice, background))
                  for record in context.store.evaluations(version, site)}
        for version in (before, after)
    }
    audit_ids = sorted(case.case_id for case in context.store.cases(site) if case.split == "audit")
    return [CaseStructureDiceOut(case_id=case_id, before=by_version[before].get(case_id), after=by_version[after].get(case_id))
            for case_id in audit_ids]


def _finite(dice: dict[str, float]) -> dict[str, float | None]:
    return {name: None if math.isnan(value) else value for name, value in dice.items()}
