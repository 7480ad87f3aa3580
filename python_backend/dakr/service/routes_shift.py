"""Know before you adapt: a registered site's shift check and the labelling order of unlabelled images."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile

from dakr.service.context import ServiceContext, active_or_409, get_context, site_or_404, temp_folder
from dakr.service.schemas import ErrorOut, RankedImageOut, SiteCheckOut
from dakr.service.uploads import save_volume
from dakr.shift import check_site, rank_images

router = APIRouter(tags=["shift"])


@router.get(
    "/sites/{site}/check",
    response_model=SiteCheckOut,
    responses={
        400: {"model": ErrorOut, "description": "invalid site name"},
        404: {"model": ErrorOut, "description": "unknown site"},
        409: {"model": ErrorOut, "description": "no model yet"},
    },
    summary="How far a registered site is from the known ones, and the active model's Dice on it",
)
def site_check(site: str, context: ServiceContext = Depends(get_context)) -> SiteCheckOut:
    site_or_404(context.store, site)
    active_or_409(context.store)
    with context.torch_work:
        check = check_site(context.store, site)
    return SiteCheckOut(**check.to_dict())


@router.post(
    "/rank",
    response_model=list[RankedImageOut],
    responses={
        400: {"model": ErrorOut, "description": "invalid file name"},
        409: {"model": ErrorOut, "description": "no model yet"},
        415: {"model": ErrorOut, "description": "not a NIfTI, NRRD or MetaImage volume"},
    },
    summary="Order a new site's unlabelled images by the value of labelling them",
)
def rank(
    images: Annotated[list[UploadFile], File(min_length=1, description="unlabelled volumes of the new site")],
    seed: Annotated[int, Query(ge=0, le=2**31 - 1, description="seed of the tie-breaking")] = 0,
    context: ServiceContext = Depends(get_context),
) -> list[RankedImageOut]:
    """Ranks by uncertainty of the active model and feature-space novelty (see ``dakr site rank``)."""
    active_or_409(context.store)
    folder = temp_folder(context.store)
    try:
        paths = [save_volume(upload, folder) for upload in images]
        with context.torch_work:
            ranked = rank_images(context.store, paths, seed=seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [RankedImageOut(**{**item.to_dict(), "path": Path(item.path).name}) for item in ranked]
