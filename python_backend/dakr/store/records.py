"""Records returned by the store, and its error type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: States a job can be in (see the HTTP API).
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
#: The two parts of a site's frozen split.
SPLITS = ("train", "audit")


class StoreError(RuntimeError):
    """A store operation was refused; the message says what to do instead."""


class SitePurgedError(StoreError):
    """The site's volumes and predictions were deleted (purged); nothing of it can be written."""


@dataclass
class SiteInfo:
    """A registered site and the size of its frozen train/audit split."""

    name: str
    created: str
    split_seed: int
    audit_fraction: float
    n_train: int
    n_audit: int
    purged: bool


@dataclass
class CaseRecord:
    """One stored case; the file paths are ``None`` once the site is purged."""

    site: str
    case_id: str
    split: str
    image_path: Path | None
    label_path: Path | None


@dataclass
class VersionInfo:
    """An immutable model version with its lineage."""

    id: int
    parent: int | None
    site: str
    strategy: str
    config: dict[str, Any]
    seed: int
    created: str
    active: bool


@dataclass
class EvaluationRecord:
    """Per-class Dice and HD95 of one version on one case, keyed by label name."""

    version: int
    site: str
    case_id: str
    dice: dict[str, float]
    hd95: dict[str, float]


@dataclass
class JobRecord:
    """A unit of background work (adapt, evaluate, ...) and its outcome."""

    id: str
    kind: str
    state: str
    params: dict[str, Any]
    created: str
    updated: str
    error: str | None
    result: dict[str, Any] | None
    pid: int | None


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string."""
    return datetime.now(timezone.utc).isoformat()
