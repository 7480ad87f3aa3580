"""Model versions: list, activate (rollback), download, evaluate, the Dice matrix, and prediction."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from dakr.data.site import case_id_from_image
from dakr.governance.decisions import activate_checked, statuses, version_status
from dakr.service.context import ServiceContext, get_context, temp_folder, version_or_404, version_or_active
from dakr.service.schemas import ActiveOrVersion, ErrorOut, JobCreatedOut, MatrixOut, ModelOut, VersionPath
from dakr.service.security import safe_name
from dakr.service.shift_responses import SHIFT_HEADERS_DOC, shift_file_response
from dakr.service.uploads import FORMAT_SUFFIXES, check_volume, read_uploaded_volume
from dakr.shift import predict_with_shift
from dakr.store import StoreError, VersionInfo
from dakr.store.files import CONFIG_FILE, WEIGHTS_FILE

router = APIRouter(tags=["models"])
_NOT_FOUND = {404: {"model": ErrorOut, "description": "unknown model version"}}


def model_out(version: VersionInfo, dice: dict[str, float], status: str) -> ModelOut:
    return ModelOut(**asdict(version), dice=dice, status=status)


def dice_by_version(context: ServiceContext) -> dict[int, dict[str, float]]:
    """Version id -> {site: mean foreground Dice} of every evaluated pair."""
    versions, sites, matrix = context.store.dice_matrix()
    return {
        version: {site: value for site, value in zip(sites, row) if value is not None}
        for version, row in zip(versions, matrix)
    }


@router.get("/models", response_model=list[ModelOut], summary="All model versions with their per-site Dice")
def list_models(context: ServiceContext = Depends(get_context)) -> list[ModelOut]:
    dice, status = dice_by_version(context), statuses(context.store)
    return [model_out(version, dice.get(version.id, {}), status[version.id]) for version in context.store.versions()]


@router.post(
    "/models/{version_id}/activate",
    response_model=ModelOut,
    responses={**_NOT_FOUND, 409: {"model": ErrorOut, "description": "the version is held or rejected"}},
    summary="Make a version the active one (rollback); held or rejected versions need an approval",
)
def activate_model(version_id: VersionPath, context: ServiceContext = Depends(get_context)) -> ModelOut:
    version_or_404(context.store, version_id)
    try:
        version = activate_checked(context.store, version_id)
    except StoreError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return model_out(version, dice_by_version(context).get(version_id, {}), version_status(context.store, version_id))


@router.get(
    "/models/{version_id}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "weights.safetensors and config.json"}, **_NOT_FOUND},
    summary="The weights and config of a version as a zip file (the replay buffer, which holds patient data, is left out)",
)
def download_model(version_id: VersionPath, context: ServiceContext = Depends(get_context)) -> FileResponse:
    version_or_404(context.store, version_id)
    source = context.store.version_dir(version_id)
    folder = temp_folder(context.store)
    archive = folder / f"dakr-model-{version_id}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            bundle.write(source / name, arcname=name)
    cleanup = BackgroundTask(shutil.rmtree, folder)
    return FileResponse(archive, media_type="application/zip", filename=archive.name, background=cleanup)


@router.post(
    "/models/{version_id}/evaluate",
    response_model=JobCreatedOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_NOT_FOUND,
    summary="Evaluate a version on every site's audit cases (a background job)",
)
def evaluate_model(version_id: VersionPath, context: ServiceContext = Depends(get_context)) -> JobCreatedOut:
    version_or_404(context.store, version_id)
    job = context.runner.submit("evaluate", {"version": version_id})
    return JobCreatedOut(job_id=job.id)


@router.get("/evaluation/matrix", response_model=MatrixOut, summary="Dice of every version on every site, overall and per class")
def evaluation_matrix(context: ServiceContext = Depends(get_context)) -> MatrixOut:
    versions, sites, dice = context.store.dice_matrix()
    return MatrixOut(versions=versions, sites=sites, dice=dice, per_class=context.store.class_dice_matrix())


@router.post(
    "/predict",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "label map (or uncertainty map), same format and geometry as the input; the headers carry "
            "the case's shift verdict",
            "headers": SHIFT_HEADERS_DOC,
        },
        400: {"model": ErrorOut, "description": "invalid file name or unreadable volume"},
        409: {"model": ErrorOut, "description": "no model yet"},
        413: {"model": ErrorOut, "description": "upload or volume larger than the server's limits"},
        415: {"model": ErrorOut, "description": "not a NIfTI, NRRD or MetaImage volume"},
        422: {"model": ErrorOut, "description": "absurd voxel spacing, resampled grid over the limit, or the volume check was stopped"},
        **_NOT_FOUND,
    },
    summary="Segment an uploaded volume",
)
def predict(
    file: Annotated[UploadFile, File(description="a 3D volume (.nii.gz, .nii, .nrrd, .mha)")],
    version: ActiveOrVersion = None,
    output: Annotated[
        Literal["labels", "uncertainty"], Query(description="labels, or the voxel-wise normalised entropy (0-1)")
    ] = "labels",
    context: ServiceContext = Depends(get_context),
) -> FileResponse:
    """The label map comes back in the input's format, on the input's exact voxel grid."""
    version_id = version_or_active(context.store, version)
    name = safe_name(file.filename, "file")
    suffix = FORMAT_SUFFIXES[check_volume(name, file.file)]
    folder = temp_folder(context.store)
    try:
        source = folder / name
        with source.open("wb") as handle:
            shutil.copyfileobj(file.file, handle)
        image = read_uploaded_volume(source)
        with context.torch_work:
            result = predict_with_shift(context.store, image, version_id, source=name)
        target = f"{case_id_from_image(name)}{'_uncertainty' if output == 'uncertainty' else ''}{suffix}"
        return shift_file_response(folder, result.labels if output == "labels" else result.uncertainty, target, result,
                                   "application/octet-stream")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
