"""Sites: register (upload or server folder), list, list cases, purge."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile, status

from dakr.data.errors import SiteValidationError
from dakr.data.names import check_label_names
from dakr.data.site import discover_site
from dakr.service.context import ServiceContext, get_context, site_or_404
from dakr.service.schemas import CaseOut, ErrorOut, SiteFromPathIn, SiteOut
from dakr.service.security import safe_name
from dakr.service.uploads import register_site_files, relative_problems, site_spec_from_uploads
from dakr.store import SiteInfo, Store, StoreError

router = APIRouter(tags=["sites"])
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
    name: Annotated[str, Form(description="site name: letters, digits, '.', '_', '-'")],
    images: Annotated[list[UploadFile], File(description="volumes, e.g. case01_0000.nii.gz")],
    labels: Annotated[list[UploadFile], File(description="label maps, e.g. case01.nii.gz")],
    audit_fraction: Annotated[float, Form(gt=0.0, lt=1.0)] = 0.2,
    seed: Annotated[int, Form(description="seed of the frozen train/audit split")] = 0,
    label_names: Annotated[str | None, Form(description='JSON label set, e.g. {"background": 0, "CSF": 1}')] = None,
    context: ServiceContext = Depends(get_context),
) -> SiteOut:
    """Images and label maps are paired by case id (file name without suffix and ``_0000``).

    Every problem of the data is reported at once (422); nothing is stored on error.
    """
    _require_new_site(context.store, name)
    declared = _parse_label_names(label_names)
    with tempfile.TemporaryDirectory(prefix="dakr-upload-") as folder:
        try:
            spec = site_spec_from_uploads(images, labels, Path(folder), declared)
        except SiteValidationError as exc:
            raise relative_problems(exc, Path(folder)) from exc
        info = register_site_files(context.store, name, spec, Path(folder), audit_fraction=audit_fraction, seed=seed)
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
    path = Path(request.path).expanduser()
    if not path.is_absolute():
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{request.path!r} is not an absolute path; give the full path of the site folder"
        )
    spec = discover_site(path)
    info = register_site_files(context.store, request.name, spec, path, audit_fraction=request.audit_fraction, seed=request.seed)
    return site_out(info)


@router.get("/sites/{name}/cases", response_model=list[CaseOut], responses=_ERRORS, summary="Cases of a site and their split")
def list_cases(name: str, context: ServiceContext = Depends(get_context)) -> list[CaseOut]:
    site_or_404(context.store, name)
    return [CaseOut(case_id=case.case_id, split=case.split) for case in context.store.cases(name)]


@router.post(
    "/sites/{name}/purge",
    response_model=SiteOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "a running job trains on the site"}},
    summary="Delete a site's volumes, cached predictions and buffer samples (metrics are kept)",
)
def purge_site(name: str, context: ServiceContext = Depends(get_context)) -> SiteOut:
    site_or_404(context.store, name)
    running = context.runner.running_training_job()
    if running is not None and context.store.job(running).params.get("site") == name:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {running} is training on site {name!r}; cancel it or wait for it before purging"
        )
    return site_out(context.store.purge_site(name))
