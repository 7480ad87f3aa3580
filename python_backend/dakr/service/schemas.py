"""Request and response models of the HTTP API v1 (they make up the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, Field

from dakr.progress import ProgressEvent
from dakr.store.sites import MAX_SEED

#: Largest integer accepted in a path or query (SQLite's INTEGER range); larger ones get a 422.
MAX_INT = 2**63 - 1
#: A model version id in a path.
VersionPath = Annotated[int, Path(ge=1, le=MAX_INT, description="model version id")]
#: An optional model version id in a query; the active version when left out.
ActiveOrVersion = Annotated[int | None, Query(ge=1, le=MAX_INT, description="model version (default: the active one)")]
#: The seed of a site's frozen train/audit split.
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="seed of the frozen train/audit split")]

#: The unit of every Dice value in the API (people-facing tables show points, i.e. this times 100).
DICE_UNIT = "as a fraction from 0 to 1 (the CLI, report and README show Dice points: fraction x 100)"

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
    seed: Seed = 0


class CaseOut(BaseModel):
    case_id: str
    split: Literal["train", "audit"]


class AdaptJobIn(BaseModel):
    """Start the continual update of the active model on a registered site."""

    kind: Literal["adapt"]
    site: str
    strategy: str = "dakr"
    #: Config overrides with nested or dotted keys, like a CLI config file:
    #: ``{"train": {"epochs": 2}}`` or ``{"train.epochs": 2}``.
    config: dict[str, Any] = Field(default_factory=dict)
    #: torch threads of the job's worker (default: the server's cores divided among its running workers).
    threads: int | None = Field(default=None, ge=1)
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
    result: dict[str, Any] | None = Field(
        description='adapt jobs: `{"version": id, "active": bool, "activation": one line, "gate": {...}}` (the gate '
        "outcome: verdict, summary, activated, failing sites, per-site checks; a version is activated only if the "
        "gate allows it and the active version was still its parent; `activation` says what happened and how to "
        'use an inactive version); evaluate jobs: `{"version": id, "dice": {site: mean foreground Dice}}` ' + DICE_UNIT
    )


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
    dice: dict[str, float] = Field(description="mean foreground Dice on each evaluated site's audit cases, " + DICE_UNIT)


class MatrixOut(BaseModel):
    """Dice of every version (rows) on every site (columns); ``null`` where not evaluated."""

    versions: list[int]
    sites: list[str]
    dice: list[list[float | None]] = Field(description="mean foreground Dice [version][site], " + DICE_UNIT)
    per_class: dict[str, list[list[float | None]]] = Field(description="per label name, Dice [version][site], " + DICE_UNIT)


class CaseStructureDiceOut(BaseModel):
    """Per-structure foreground Dice of one audit case under two versions (``null``: not evaluated, or
    the structure is absent from both label map and prediction)."""

    case_id: str
    before: dict[str, float | None] | None
    after: dict[str, float | None] | None


class CaseDiceOut(BaseModel):
    """Mean foreground Dice of one audit case under two versions; ``null`` where not evaluated."""

    before: float | None = Field(description=DICE_UNIT)
    after: float | None = Field(description=DICE_UNIT)


class CaseShiftOut(BaseModel):
    case_id: str
    split: str
    shift_score: float
    nearest_site: str
    dice: float = Field(description="mean foreground Dice " + DICE_UNIT)
    dice_per_structure: dict[str, float] = Field(description="Dice per structure " + DICE_UNIT)


class SiteCheckOut(BaseModel):
    site: str
    version: int
    known_sites: list[str]
    threshold: float = Field(description="shift score above which a case is out of distribution")
    median_shift: float
    mmd: dict[str, float] = Field(description="squared kernel MMD to each known site's training cases")
    nearest_site: str
    unlike_known: bool
    dice: float = Field(description="active model's mean foreground Dice on the site's cases " + DICE_UNIT)
    dice_per_structure: dict[str, float] = Field(description=DICE_UNIT)
    known_sites_dice: float | None = Field(description="active model's Dice on the known sites' audit cases " + DICE_UNIT)
    adapt_recommended: bool
    cases: list[CaseShiftOut]
    verdict: str


class RankedImageOut(BaseModel):
    rank: int
    path: str = Field(description="uploaded file name")
    uncertainty: float
    novelty: float
    score: float
    reason: str
