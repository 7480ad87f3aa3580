"""Site registration helpers: the frozen train/audit split and copying cases into the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.store.records import StoreError

if TYPE_CHECKING:
    from dakr.data.site import SiteSpec

IMAGE_FILE = "image.nii.gz"
LABEL_FILE = "label.nii.gz"
#: Largest seed of a frozen split (seeds are 0 .. 2**32 - 1).
MAX_SEED = 2**32 - 1


def check_audit_fraction(audit_fraction: float) -> None:
    """Raise :class:`StoreError` unless ``0 < audit_fraction < 1``."""
    if not 0.0 < audit_fraction < 1.0:
        raise StoreError(
            f"audit_fraction must be between 0 and 1 (exclusive), got {audit_fraction}. "
            "Fix: pass a fraction such as 0.2"
        )


def check_seed(seed: int) -> None:
    """Raise :class:`StoreError` unless ``seed`` is an integer in 0 .. :data:`MAX_SEED`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise StoreError(f"the split seed must be an integer from 0 to {MAX_SEED}, got {seed!r}. Fix: pass a seed such as 0")


def frozen_split(case_ids: list[str], audit_fraction: float, seed: int) -> dict[str, str]:
    """Map each of at least 2 case ids to ``"train"`` or ``"audit"``, reproducibly for ``seed``.

    The sorted ids are shuffled with ``seed``; the first ``max(1, round(audit_fraction * n))``
    become audit cases, keeping at least one training case.
    """
    ids = sorted(case_ids)
    n_audit = min(len(ids) - 1, max(1, round(audit_fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    audit = {ids[index] for index in order[:n_audit]}
    return {case_id: "audit" if case_id in audit else "train" for case_id in ids}


def copy_cases(spec: SiteSpec, folder: Path, progress: ProgressCallback | None = None) -> None:
    """Copy every case of ``spec`` as NIfTI into ``folder/<case>/{image,label}.nii.gz``."""
    from dakr.data.io import read_image, write_image

    report = progress or null_progress
    cases = sorted(spec.cases, key=lambda case: case.case_id)
    for step, case in enumerate(cases, start=1):
        case_dir = folder / case.case_id
        write_image(read_image(case.image, trusted_root=spec.trusted_root), case_dir / IMAGE_FILE)
        write_image(read_image(case.label, trusted_root=spec.trusted_root), case_dir / LABEL_FILE)
        message = f"copied case {case.case_id}"
        report(ProgressEvent(stage="register", step=step, total=len(cases), message=message))
