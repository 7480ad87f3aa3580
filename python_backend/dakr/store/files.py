"""Crash-safe file operations of the store: temp folders, fsync, atomic renames, npz files.

A blob is written into a temp folder (``.tmp-<uuid>``) or temp file next to its final place,
flushed to disk, and renamed into place inside the DB transaction that makes it visible.
A crash therefore leaves at worst a temp folder or an orphan folder that no DB row points to;
both are invisible to readers and removed later.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where weights are written: the rest of the store works without it
    import torch

TEMP_PREFIX = ".tmp-"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
BUFFER_FILE = "buffer.npz"
#: Temp folders younger than this may belong to a writer that is still running.
STALE_TEMP_AGE_S = 3600.0


def new_temp_dir(parent: Path) -> Path:
    """Create and return a fresh temp folder inside ``parent``."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    folder.mkdir()
    return folder


def fsync_file(path: Path) -> None:
    """Flush a written file's content to disk."""
    with path.open("r+b") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new names, renames) to disk; not possible on Windows."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder below ``root`` (bottom-up) to disk."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def move_into_place(source: Path, target: Path) -> None:
    """Rename the finished folder ``source`` to ``target``, replacing an orphan left by a crash.

    Callers hold the store's write lock, so an existing ``target`` has no DB row.
    """
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)
    fsync_dir(target.parent)


def remove_dir(path: Path) -> None:
    """Delete the folder ``path`` with its content if it exists; failures are raised."""
    if path.exists():
        shutil.rmtree(path)


def remove_stale_temp_dirs(parent: Path, max_age_s: float = STALE_TEMP_AGE_S) -> None:
    """Delete temp folders in ``parent`` older than ``max_age_s`` (left by crashed writers)."""
    if not parent.is_dir():
        return
    cutoff = time.time() - max_age_s
    for entry in parent.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.stat().st_mtime < cutoff:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def remove_unlisted_dirs(parent: Path, keep: set[str]) -> None:
    """Delete the folders in ``parent`` named neither in ``keep`` nor as temp folders."""
    for entry in parent.iterdir():
        if entry.is_dir() and not entry.name.startswith(TEMP_PREFIX) and entry.name not in keep:
            shutil.rmtree(entry)


def write_version_files(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    buffer: dict[str, np.ndarray] | None,
) -> None:
    """Write the weights (safetensors), config (JSON) and optional buffer (npz) into ``folder``."""
    from safetensors.torch import save_file

    cpu_tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    save_file(cpu_tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if buffer is not None:
        save_npz(folder / BUFFER_FILE, buffer)
    fsync_tree(folder)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed npz file without pickled objects."""
    with path.open("wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)
        handle.flush()
        os.fsync(handle.fileno())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an npz file; pickled objects are refused."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def replace_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically rewrite the npz file at ``path`` (temp file + rename)."""
    temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        save_npz(temp, arrays)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
