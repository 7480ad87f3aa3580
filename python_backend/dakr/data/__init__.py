"""Data: reading volumes, describing and validating sites, preprocessing and patch sampling.

The names below are imported on first use, so that light modules (``dakr.data.errors``,
``dakr.data.names``) do not load SimpleITK, torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "errors",
    "ImageTooLargeError": "errors",
    "SiteValidationError": "errors",
    "ImageLimits": "limits",
    "SUPPORTED_SUFFIXES": "io",
    "image_suffix": "io",
    "label_image_like": "io",
    "read_image": "io",
    "sniff_format": "io",
    "write_image": "io",
    "check_label_names": "names",
    "validate_name": "names",
    "PreprocessedCase": "preprocessing",
    "preprocess_case": "preprocessing",
    "preprocess_image": "preprocessing",
    "restore_geometry": "preprocessing",
    "PatchSampler": "sampling",
    "CaseFiles": "site",
    "SiteSpec": "site",
    "case_id_from_image": "site",
    "discover_site": "site",
    "site_from_pairs": "site",
    "validate_site": "validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
