"""Rules for user-chosen names (sites, case ids) and label sets."""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Device names Windows reserves in every folder, with or without an extension (``nul.nii.gz``).
_WINDOWS_RESERVED = re.compile(r"(?:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(?:\..*)?", re.IGNORECASE)
#: Label values are stored as uint8.
MAX_LABEL_VALUE = 255


def validate_name(name: str, kind: str) -> str:
    """Return ``name`` if it is a safe site/case name, else raise ``ValueError``.

    A safe name is 1-64 characters of letters, digits, ``.``, ``_`` and ``-`` starting with a
    letter or digit, so it can never be an absolute path, contain a separator or be ``..``.
    It may not end with a dot and may not be a Windows device name (``CON``, ``PRN``, ``AUX``,
    ``NUL``, ``COM1``-``COM9``, ``LPT1``-``LPT9``, with or without an extension), so the same
    name means the same file on every operating system.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no spaces, slashes or '..')"
        )
    if name.endswith("."):
        raise ValueError(f"invalid {kind} name {name!r}: it may not end with a dot (Windows drops it); remove the trailing dot")
    if _WINDOWS_RESERVED.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: {name.split('.')[0].upper()} is a device name reserved by Windows; choose another name"
        )
    return name


def check_label_names(raw: object) -> dict[str, int]:
    """Validate a label set ``{name: value}`` and return it sorted by value.

    Values must be distinct integers in 0..255 with 0 (background) present; raises
    ``ValueError`` describing the first problem otherwise.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"labels must be a non-empty mapping name -> integer value, got {raw!r}")
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label name {name!r} must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LABEL_VALUE:
            raise ValueError(
                f"label {name!r} has value {value!r}; values must be integers in 0..{MAX_LABEL_VALUE} "
                "(region labels given as lists are not supported)"
            )
        labels[name] = value
    values = list(labels.values())
    if len(set(values)) != len(values):
        raise ValueError(f"label values must be distinct, got {labels}")
    if 0 not in values:
        raise ValueError(f"the label set {labels} has no background value 0")
    return dict(sorted(labels.items(), key=lambda item: item[1]))
