"""Checkpoint files of a training run: one ``checkpoint.pt`` per work folder, written crash-safely.

A checkpoint is written to a temp file, flushed to disk, renamed over the previous one and
its folder entry flushed too, so after a crash (or a power cut) the folder holds either the
previous or the new checkpoint, whole. Besides the training state, every checkpoint carries
``"run"``: JSON text describing the run it belongs to (see :mod:`dakr.resume`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dakr.store.files import fsync_dir

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_file(work_dir: str | Path) -> Path:
    """Where the checkpoint of the run using ``work_dir`` lives."""
    return Path(work_dir) / CHECKPOINT_NAME


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the checkpoint at ``path`` with ``state``, fsyncing the file and its folder."""
    folder_existed = path.parent.is_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not folder_existed:
        fsync_dir(path.parent.parent)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved at ``path`` (tensors only, never arbitrary pickled objects)."""
    return torch.load(path, map_location=device, weights_only=True)
