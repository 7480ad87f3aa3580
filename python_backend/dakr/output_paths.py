"""Checks and permissions for files the product writes for the user (label maps, reports)."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from dakr.data.errors import DataError


def user_file_mode() -> int:
    """Permission bits a plain ``open()`` would give a new file: ``0o666`` minus the process umask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_output_path(path: str | PathLike[str]) -> Path:
    """Refuse, before any work is done, an output label map that could not be written.

    The suffix must be a supported volume format, the path must not be a folder, and its folder
    must exist (or be creatable) and be writable. Returns the path.
    """
    from dakr.data.io import image_suffix

    out = Path(path)
    image_suffix(out)
    if out.is_dir():
        raise DataError(out, "is a folder", "name an output file such as prediction.nii.gz")
    folder = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(out, f"cannot be written: {folder} is not a writable folder", "choose an output folder you can write to")
    return out
