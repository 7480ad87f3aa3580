"""The lock file a module writes into the store of the local server it started: its address, token
and process id, so that a second Slicer on the same store connects to that server instead of
starting another one. Readable only by the user (it holds the token)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .client import BackendClient, BackendError

LOCK_NAME = ".dakr-slicer-server.json"


@dataclass(frozen=True)
class ServerLock:
    url: str
    token: str
    #: Process id of the server.
    pid: int


def lock_path(store: Path) -> Path:
    return Path(store) / LOCK_NAME


def write_lock(store: Path, lock: ServerLock) -> Path:
    """Write the lock atomically with mode 0600."""
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(lock), handle)
    os.replace(partial, path)
    return path


def read_lock(store: Path) -> ServerLock | None:
    """The lock in ``store``, or ``None`` when there is none or it cannot be read."""
    try:
        data = json.loads(lock_path(store).read_text(encoding="utf-8"))
        return ServerLock(str(data["url"]), str(data["token"]), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_lock(store: Path, pid: int) -> None:
    """Remove the lock if it still names the server ``pid`` (another module may have replaced it)."""
    lock = read_lock(store)
    if lock is not None and lock.pid == pid:
        lock_path(store).unlink(missing_ok=True)


def running_server(store: Path, timeout_s: float = 2.0) -> BackendClient | None:
    """A client of the server the lock names, if that server still answers and accepts its token
    (blocking: one short request; call it on a worker thread). A stale lock gives ``None``."""
    lock = read_lock(store)
    if lock is None:
        return None
    client = BackendClient(lock.url, lock.token, timeout_s=timeout_s)
    try:
        client.info()
    except BackendError:
        return None
    return BackendClient(lock.url, lock.token)
