"""Request and response models of the HTTP API v1 (they make up the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from dakr.progress import ProgressEvent

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


class ErrorOut(BaseModel):
    """Every error response: a message that says what to do."""

    detail: str


class ConflictOut(ErrorOut):
    """A training job is already running; ``job_id`` names it."""

    job_id: str


class DeviceOut(BaseModel):
    type: Literal["cpu", "cuda"]
    name: str
    #: An NVIDIA GPU is present but this PyTorch build cannot use it (CPU-only wheel or driver problem).
    cuda_available_but_unused: bool


class InfoOut(BaseModel):
    product: str
    version: str
    api_version: str
    device: DeviceOut
    label_names: dict[str, int] | None
    active_version: int | None
    running_job: str | None


class SiteOut(BaseModel):
    name: str
    n_train: int
    n_audit: int
    purged: bool
    created: str
    split_seed: int
    audit_fraction: float


class SiteFromPathIn(BaseModel):
    """Register a site folder in nnU-Net raw layout that the server can read."""

    name: str
    path: str
    audit_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


class CaseOut(BaseModel):
    case_id: str
    split: Literal["train", "audit"]


class AdaptJobIn(BaseModel):
    """Start the continual update of the active model on a registered site."""

    kind: Literal["adapt"]
    site: str
    strategy: str = "dakr"
    #: Dotted config overrides, e.g. ``{"train.epochs": 2}``.
    config: dict[str, Any] = Field(default_factory=dict)
    #: Override the acceptance policy's activation for this run (``null``: by the policy).
    activate: Literal["never", "if-accepted", "always"] | None = None


class JobCreatedOut(BaseModel):
    job_id: str


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    params: dict[str, Any]
    progress: ProgressEvent | None
    created: str
    updated: str
    error: str | None
    #: ``{"version": id, "gate": {...}}`` for adapt jobs (the gate outcome: verdict, summary,
    #: activated, failing sites, per-site checks); evaluate jobs ``{"version": id, "dice": {site: mean Dice}}``.
    result: dict[str, Any] | None


class EventsOut(BaseModel):
    events: list[ProgressEvent]
    #: Pass as ``since`` to get only newer events.
    next: int


class LogOut(BaseModel):
    lines: list[str]


class ModelOut(BaseModel):
    id: int
    #: accepted, held, overridden, approved, rejected or unchecked (see ``dakr models``).
    status: str
    parent: int | None
    site: str
    strategy: str
    created: str
    seed: int
    config: dict[str, Any]
    active: bool
    #: Mean foreground Dice on each evaluated site's audit cases.
    dice: dict[str, float]


class MatrixOut(BaseModel):
    """Dice of every version (rows) on every site (columns); ``null`` where not evaluated."""

    versions: list[int]
    sites: list[str]
    dice: list[list[float | None]]
    per_class: dict[str, list[list[float | None]]]


class CaseDiceOut(BaseModel):
    """Mean foreground Dice of one audit case under two versions; ``null`` where not evaluated."""

    before: float | None
    after: float | None
