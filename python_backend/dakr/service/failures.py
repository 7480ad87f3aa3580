"""Storage failures (full disk, I/O errors) told apart from bugs, with the real cause kept.

The HTTP layer answers them with 507 (disk full) or 503 (storage I/O error) instead of a bare
500, and the worker records them in the job instead of dying silently.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass

#: ``errno`` values that mean "no space left" (a full disk or an exhausted quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: SQLite messages that mean the same.
_SQLITE_FULL = ("database or disk is full",)
#: The exit code of a worker that could not even record its failure in the store (EX_IOERR).
EXIT_STORAGE_FAILED = 74
INSUFFICIENT_STORAGE = 507
SERVICE_UNAVAILABLE = 503


@dataclass(frozen=True)
class StorageFailure:
    """A failed write or read of the store: HTTP ``status`` and a message naming the cause."""

    status: int
    message: str


def storage_failure(exc: BaseException, store_name: str) -> StorageFailure | None:
    """The storage failure behind ``exc`` (itself or a cause in its chain), or ``None`` for other errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify(current, store_name)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _classify(exc: BaseException, store_name: str) -> StorageFailure | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = exc.strerror or str(exc)
        if exc.errno in DISK_FULL_ERRNOS:
            return _full(store_name, cause)
        return StorageFailure(
            SERVICE_UNAVAILABLE,
            f"reading or writing store {store_name!r} failed ({cause}). Fix: check the disk and its permissions, then retry",
        )
    if isinstance(exc, sqlite3.OperationalError):
        cause = str(exc)
        if any(text in cause for text in _SQLITE_FULL):
            return _full(store_name, cause)
        return StorageFailure(
            SERVICE_UNAVAILABLE,
            f"the database of store {store_name!r} could not be used ({cause}). Fix: check the disk, then retry",
        )
    return None


def _full(store_name: str, cause: str) -> StorageFailure:
    return StorageFailure(
        INSUFFICIENT_STORAGE,
        f"the disk holding store {store_name!r} is full ({cause}). Fix: free space on it, then retry",
    )
