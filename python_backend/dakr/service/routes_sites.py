"""Sites: register (upload or server folder), list, list cases, purge."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile, status

from dakr.data.errors import SiteValidationError
from dakr.data.names import check_label_names
from dakr.data.site import discover_site
from dakr.service.context import ServiceContext, get_context, site_or_404, temp_folder
from dakr.service.schemas import CaseOut, ErrorOut, SiteFromPathIn, SiteOut
from dakr.service.security import safe_name
from dakr.service.uploads import register_site_files, relative_problems, site_spec_from_uploads
from dakr.store import SiteInfo, Store, StoreError
from dakr.store.sites import MAX_SEED

router = APIRouter(tags=["sites"])
#: Seconds a purge waits for the writer lock beyond the cancel grace period of the workers it stopped.
PURGE_EXTRA_WAIT_S = 10.0
_ERRORS = {
    400: {"model": ErrorOut, "description": "invalid name or request"},
    404: {"model": ErrorOut, "description": "unknown site"},
}
_REGISTER_ERRORS = {
    400: {"model": ErrorOut, "description": "invalid site or file name"},
    409: {"model": ErrorOut, "description": "a site of that name exists"},
    413: {"model": ErrorOut, "description": "upload larger than the server's limit, or reading it needs more memory than allowed"},
    415: {"model": ErrorOut, "description": "a file is not a NIfTI, NRRD or MetaImage volume"},
    422: {"model": ErrorOut, "description": "the site was rejected (the message lists every problem) or its check was stopped"},
}


def site_out(info: SiteInfo) -> SiteOut:
    return SiteOut(**asdict(info))


def _require_new_site(store: Store, name: str) -> None:
    safe_name(name, "site")
    try:
        store.require_new_site(name)
    except StoreError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.get("/sites", response_model=list[SiteOut], summary="All registered sites")
def list_sites(context: ServiceContext = Depends(get_context)) -> list[SiteOut]:
    return [site_out(info) for info in context.store.sites()]


@router.post(
    "/sites",
    response_model=SiteOut,
    status_code=status.HTTP_201_CREATED,
    responses=_REGISTER_ERRORS,
    summary="Register a site from uploaded volumes and label maps",
)
def register_site(
    name: Annotated[str, Form(min_length=1, description="site name: letters, digits, '.', '_', '-'")],
    images: Annotated[list[UploadFile], File(min_length=1, description="volumes, e.g. case01_0000.nii.gz")],
    labels: Annotated[list[UploadFile], File(min_length=1, description="label maps, e.g. case01.nii.gz")],
    audit_fraction: Annotated[float, Form(gt=0.0, lt=1.0)] = 0.2,
    seed: Annotated[int, Form(ge=0, le=MAX_SEED, description="seed of the frozen train/audit split")] = 0,
    label_names: Annotated[str | None, Form(description='JSON label set, e.g. {"background": 0, "CSF": 1}')] = None,
    context: ServiceContext = Depends(get_context),
) -> SiteOut:
    """Images and label maps are paired by case id (file name without suffix and ``_0000``).

    Every problem of the data is reported at once (422); nothing is stored on error.
    """
    _require_new_site(context.store, name)
    declared = _parse_label_names(label_names)
    folder = temp_folder(context.store)
    try:
        try:
            spec = site_spec_from_uploads(images, labels, folder, declared)
        except SiteValidationError as exc:
            raise relative_problems(exc, folder) from exc
        info = register_site_files(context.store, name, spec, folder, audit_fraction=audit_fraction, seed=seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return site_out(info)


def _parse_label_names(raw: str | None) -> dict[str, int] | None:
    if raw is None:
        return None
    try:
        return check_label_names(json.loads(raw))
    except (json.JSONDecodeError, ValueError) as exc:
        example = '{"background": 0, "CSF": 1}'
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"label_names: {exc}. Fix: send JSON such as {example}") from exc


@router.post(
    "/sites/from-path",
    response_model=SiteOut,
    status_code=status.HTTP_201_CREATED,
    responses={**_REGISTER_ERRORS, 403: {"model": ErrorOut, "description": "server not bound to loopback"}},
    summary="Register a site folder (nnU-Net raw layout) on the server's disk",
)
def register_site_from_path(request: SiteFromPathIn, context: ServiceContext = Depends(get_context)) -> SiteOut:
    """Only when the server listens on loopback: a remote client must not make it read arbitrary paths."""
    if not context.loopback:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "registering a server-side folder is only allowed when the server listens on 127.0.0.1; "
            "upload the files with POST /api/v1/sites",
        )
    _require_new_site(context.store, request.name)
    path = _server_folder(request.path)
    try:
        spec = discover_site(path)
    except OSError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{request.path!r} cannot be read ({exc.strerror or exc})") from exc
    info = register_site_files(context.store, request.name, spec, path, audit_fraction=request.audit_fraction, seed=request.seed)
    return site_out(info)


def _server_folder(raw: str) -> Path:
    """The absolute folder a client named (``~`` and ``~user`` expanded), or HTTP 400 saying why not."""
    fix = "give the full path of the site folder"
    if "\0" in raw:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{raw!r} contains a NUL character; {fix}")
    try:
        path = Path(raw).expanduser()
    except RuntimeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{raw!r} cannot be expanded ({exc}); {fix}") from exc
    if not path.is_absolute():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{raw!r} is not an absolute path; {fix}")
    return path


@router.get("/sites/{name}/cases", response_model=list[CaseOut], responses=_ERRORS, summary="Cases of a site and their split")
def list_cases(name: str, context: ServiceContext = Depends(get_context)) -> list[CaseOut]:
    site_or_404(context.store, name)
    return [CaseOut(case_id=case.case_id, split=case.split) for case in context.store.cases(name)]


@router.post(
    "/sites/{name}/purge",
    response_model=SiteOut,
    responses={
        **_ERRORS,
        409: {"model": ErrorOut, "description": "a training job is active (job_id names it) or another process writes to the store"},
    },
    summary="Delete a site's volumes, cached predictions and buffer samples (metrics are kept)",
)
def purge_site(name: str, context: ServiceContext = Depends(get_context)) -> SiteOut:
    """Refused while a training job is active; running evaluations are cancelled first.

    The purge takes the store's writer lock, waiting for cancelled workers to exit; a training
    or evaluating process outside this server (e.g. ``dakr adapt``) makes it fail with 409.
    """
    site_or_404(context.store, name)
    context.runner.stop_for_purge(name)
    return site_out(context.store.purge_site(name, wait_s=context.runner.cancel_grace_s + PURGE_EXTRA_WAIT_S))
