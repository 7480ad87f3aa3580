"""Optional extras of the backend: packages that only the report (``dakr[report]``) or the demo
(``dakr[demo]``) need, so that the server installs without them."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra to install."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or explain which extra provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtraError(
            f"{purpose} needs the optional package '{module}', which is not installed. "
            f"Fix: pip install 'dakr[{extra}]'", name=module
        ) from error
