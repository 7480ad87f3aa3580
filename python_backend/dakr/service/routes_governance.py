"""Change control over HTTP: sign-off (approve / reject), the change record, the gate and the policy."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from dakr.governance.decisions import approve, gate_outcome, reject, version_status
from dakr.governance.policy import current_policy
from dakr.governance.record import change_record
from dakr.service.context import ServiceContext, get_context, version_or_404
from dakr.service.routes_models import dice_by_version, model_out
from dakr.service.schemas import ErrorOut, ModelOut, VersionPath
from dakr.store import StoreError

router = APIRouter(tags=["change control"])
_NOT_FOUND = {404: {"model": ErrorOut, "description": "unknown model version"}}


class SignoffIn(BaseModel):
    """Why the version is approved or rejected, and by whom; kept in its change record for good."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000)
    by: str | None = Field(None, max_length=200)


class PolicyOut(BaseModel):
    """The acceptance policy in force; ``id`` is ``null`` while the defaults apply."""

    id: int | None
    created: str | None
    values: dict[str, Any]


def _sign_off(context: ServiceContext, version_id: int, signoff: SignoffIn, sign: Callable[..., Any]) -> ModelOut:
    """Record an approval or rejection: 404 unknown version, 400 blank reason, 409 refused by the store."""
    version_or_404(context.store, version_id)
    try:
        sign(context.store, version_id, signoff.reason, signoff.by)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    except StoreError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    version = context.store.version(version_id)
    return model_out(version, dice_by_version(context).get(version_id, {}), version_status(context.store, version_id))


_SIGNOFF_ERRORS = {
    **_NOT_FOUND,
    400: {"model": ErrorOut, "description": "blank reason"},
    409: {"model": ErrorOut, "description": "refused by the store (e.g. rejecting the active version)"},
}


@router.post(
    "/models/{version_id}/approve",
    response_model=ModelOut,
    responses=_SIGNOFF_ERRORS,
    summary="Approve a version (e.g. one held by the gate) and activate it; the reason is recorded",
)
def approve_model(
    version_id: VersionPath, signoff: SignoffIn, context: ServiceContext = Depends(get_context)
) -> ModelOut:
    return _sign_off(context, version_id, signoff, approve)


@router.post(
    "/models/{version_id}/reject",
    response_model=ModelOut,
    responses=_SIGNOFF_ERRORS,
    summary="Reject a version; it stays inactive unless approved later; the reason is recorded",
)
def reject_model(
    version_id: VersionPath, signoff: SignoffIn, context: ServiceContext = Depends(get_context)
) -> ModelOut:
    return _sign_off(context, version_id, signoff, reject)


@router.get(
    "/models/{version_id}/record",
    response_model=dict[str, Any],
    responses=_NOT_FOUND,
    summary="The change record of a version: lineage, config, provenance with SHA-256, evaluation, gate, sign-offs",
)
def model_record(version_id: VersionPath, context: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    version_or_404(context.store, version_id)
    return change_record(context.store, version_id)


@router.get(
    "/models/{version_id}/gate",
    response_model=dict[str, Any] | None,
    responses=_NOT_FOUND,
    summary="The gate outcome of a version (null for versions made before change control)",
)
def model_gate(version_id: VersionPath, context: ServiceContext = Depends(get_context)) -> dict[str, Any] | None:
    version_or_404(context.store, version_id)
    return gate_outcome(context.store, version_id)


@router.get("/policy", response_model=PolicyOut, summary="The acceptance policy in force (set it with `dakr policy`)")
def policy(context: ServiceContext = Depends(get_context)) -> PolicyOut:
    stored = current_policy(context.store)
    return PolicyOut(id=stored.id, created=stored.created, values=stored.policy.to_dict())
