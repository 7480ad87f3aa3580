"""What a version was made from: software, device, time, and the SHA-256 of every file used.

Collected when the version is stored, so the record still names the data after a site is purged.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dakr import __version__
from dakr.store import CaseRecord, Store
from dakr.store.buffers import SITE_KEY

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def source_revision() -> str | None:
    """The git commit of the dakr source tree when it runs from a checkout, else ``None``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def device_description(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (GPU name)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def buffer_composition(buffer: dict[str, np.ndarray] | None) -> dict[str, int]:
    """Samples per site in a replay buffer (empty without one)."""
    if not buffer or SITE_KEY not in buffer:
        return {}
    return {str(site): int(count) for site, count in sorted(Counter(buffer[SITE_KEY].tolist()).items())}


def hashed_cases(cases: list[CaseRecord]) -> list[dict[str, Any]]:
    """Site, case id and the SHA-256 of the image and label of each stored case."""
    return [
        {
            "site": case.site,
            "case_id": case.case_id,
            "image_sha256": sha256_file(case.image_path),
            "label_sha256": sha256_file(case.label_path),
        }
        for case in cases
        if case.image_path is not None and case.label_path is not None
    ]


def collect_provenance(
    store: Store, version_id: int, train_sites: list[str], device: torch.device, wall_time_s: float
) -> dict[str, Any]:
    """Provenance of a version just stored: run facts, hashed training and audit data, buffers."""
    version = store.version(version_id)
    sites = [site.name for site in store.sites() if not site.purged]
    return {
        "package_version": __version__,
        "source_revision": source_revision(),
        "device": device_description(device),
        "torch_version": torch.__version__,
        "wall_time_s": round(wall_time_s, 2),
        "seeds": {
            "train": version.seed,
            "split": {site.name: site.split_seed for site in store.sites()},
        },
        "training_sites": train_sites,
        "training_cases": hashed_cases([case for site in train_sites for case in store.cases(site, "train")]),
        "audit_cases": hashed_cases([case for site in sites for case in store.cases(site, "audit")]),
        "buffer_replayed": buffer_composition(store.load_buffer(version.parent)) if version.parent else {},
        "buffer_stored": buffer_composition(store.load_buffer(version_id)),
    }
