"""Resource limits for reading volumes, set by environment variables.

Every entry point (CLI, server, its workers) reads the same variables, so one setting covers
them all; a worker inherits the server's environment. Defaults fit a large CT volume
(1024 x 1024 x 2048 voxels, 4 GiB) and stop files that claim, inflate to or resample into more.

- ``DAKR_MAX_IMAGE_VOXELS`` (default 2147483648 = 1024 x 1024 x 2048): voxels a volume may declare.
- ``DAKR_MAX_IMAGE_MB`` (default 4096): voxel bytes a volume may declare (and inflate to).
- ``DAKR_MAX_SPACING_MM`` (default 20): largest voxel spacing accepted for prediction.
- ``DAKR_MAX_RESAMPLED_VOXELS`` (default 134217728 = 512^3): voxels of the prediction grid.
- ``DAKR_VALIDATION_MEMORY_MB`` (default 2.5 x ``DAKR_MAX_IMAGE_MB`` + 1024): memory the process
  that checks uploads may take beyond what its interpreter and libraries use at start (Linux).
- ``DAKR_VALIDATION_TIMEOUT_S`` (default 600): time that process may take.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from dakr.config import ConfigError

#: Header fields and NIfTI extensions before the voxel data may not exceed this (bytes).
MAX_HEADER_BYTES = 16 * 2**20

_ENV_VOXELS = "DAKR_MAX_IMAGE_VOXELS"
_ENV_IMAGE_MB = "DAKR_MAX_IMAGE_MB"
_ENV_SPACING = "DAKR_MAX_SPACING_MM"
_ENV_RESAMPLED = "DAKR_MAX_RESAMPLED_VOXELS"
_ENV_MEMORY_MB = "DAKR_VALIDATION_MEMORY_MB"
_ENV_TIMEOUT_S = "DAKR_VALIDATION_TIMEOUT_S"


class LimitConfigError(ConfigError):
    """An environment variable holds an invalid limit; the message names it."""


@dataclass(frozen=True)
class ImageLimits:
    """How large a volume may be, checked from its header before any voxel is read."""

    max_voxels: int = 1024 * 1024 * 2048
    max_bytes: int = 4 * 2**30
    #: Largest voxel spacing (mm, any axis) accepted for prediction.
    max_spacing_mm: float = 20.0
    #: Largest voxel count of the grid a volume is resampled to for prediction.
    max_resampled_voxels: int = 512**3
    #: Address space the upload-checking process may add to its start-up size (bytes).
    validation_memory_bytes: int = int(2.5 * 4 * 2**30) + 2**30
    validation_timeout_s: float = 600.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ImageLimits:
        """The limits set by the ``DAKR_*`` variables of ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        max_bytes = int(_positive(env, _ENV_IMAGE_MB, cls.max_bytes / 2**20) * 2**20)
        default_memory_mb = 2.5 * max_bytes / 2**20 + 1024
        return cls(
            max_voxels=int(_positive(env, _ENV_VOXELS, cls.max_voxels)),
            max_bytes=max_bytes,
            max_spacing_mm=_positive(env, _ENV_SPACING, cls.max_spacing_mm),
            max_resampled_voxels=int(_positive(env, _ENV_RESAMPLED, cls.max_resampled_voxels)),
            validation_memory_bytes=int(_positive(env, _ENV_MEMORY_MB, default_memory_mb) * 2**20),
            validation_timeout_s=_positive(env, _ENV_TIMEOUT_S, cls.validation_timeout_s),
        )

    def describe_memory(self) -> str:
        """The validation memory limit and the variable that raises it, for messages."""
        return f"{self.validation_memory_bytes / 2**20:.0f} MB ({_ENV_MEMORY_MB})"

    def describe_timeout(self) -> str:
        """The validation time limit and the variable that raises it, for messages."""
        return f"{self.validation_timeout_s:g} s ({_ENV_TIMEOUT_S})"

    def size_fix(self) -> str:
        """What to do about a volume over the voxel or byte limit."""
        return (
            f"crop or downsample the volume below {self.max_voxels} voxels and {self.max_bytes / 2**20:.0f} MB, "
            f"or raise {_ENV_VOXELS} / {_ENV_IMAGE_MB} where the server or command runs"
        )

    def spacing_fix(self) -> str:
        """What to do about a spacing or resampled grid over the prediction limits."""
        return (
            "check the voxel spacing in the file's header (in Slicer: Volumes module, Volume Information); "
            f"if it is right, raise {_ENV_SPACING} / {_ENV_RESAMPLED} where the server or command runs"
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise LimitConfigError(f"environment variable {name}={raw!r} must be a positive number. Fix: unset it or set e.g. {default:g}")
    return value
