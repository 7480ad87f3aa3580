"""The store's writer lock: one training, evaluating or purging process per store at a time.

An OS file lock (``flock`` on POSIX, ``LockFileEx`` on Windows, through the ``filelock``
package) on ``<store>/dakr.lock``: the operating system releases it when the holder exits,
however it exits, so a crash never leaves the store locked. Next to it ``dakr.lock.json``
describes the holder (pid, host, command, since) for the error message of the next comer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from dakr.store.records import StoreError, now_iso

LOCK_FILE = "dakr.lock"
HOLDER_FILE = "dakr.lock.json"
#: How often a waiting process retries the lock.
POLL_S = 0.2


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's writer lock."""

    pid: int
    host: str
    command: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} ({self.command}) since {self.since}"


class StoreBusy(StoreError):
    """Another process holds the store's writer lock; ``holder`` describes it when known."""

    def __init__(self, store_name: str, holder: LockHolder | None) -> None:
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"store {store_name!r} is busy: {who} is training, evaluating or purging in it, and only one such "
            "process may write to a store at a time. Fix: wait for it to finish or stop it, then try again"
        )
        self.holder = holder


def read_holder(store_path: Path) -> LockHolder | None:
    """The holder recorded by the last process that took the lock (``None`` if unreadable)."""
    try:
        return LockHolder(**json.loads((store_path / HOLDER_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_holder(store_path: Path, holder: LockHolder) -> None:
    temp = store_path / f".{HOLDER_FILE}.{os.getpid()}"
    temp.write_text(json.dumps(asdict(holder)), encoding="utf-8")
    os.replace(temp, store_path / HOLDER_FILE)


@contextmanager
def writer_lock(
    store_path: Path,
    command: str,
    *,
    wait_s: float = 0.0,
    on_wait: Callable[[StoreBusy], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Hold the store's writer lock for the ``with`` block, describing this process as ``command``.

    Waits up to ``wait_s`` seconds (forever for ``float("inf")``) for the current holder; raises
    :class:`StoreBusy` naming it after that, or as soon as ``should_stop`` returns true.
    ``on_wait`` is called once, with that error, when the lock is not free at once.
    """
    from filelock import FileLock, Timeout  # only writers need it: reading a store works without the package

    lock = FileLock(store_path / LOCK_FILE, fallback_to_soft=False, thread_local=False)
    deadline = time.monotonic() + wait_s
    notified = False
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            busy = StoreBusy(store_path.name, read_holder(store_path))
            if time.monotonic() >= deadline or (should_stop is not None and should_stop()):
                raise busy from None
            if on_wait is not None and not notified:
                on_wait(busy)
                notified = True
            time.sleep(POLL_S)
    try:
        _write_holder(store_path, LockHolder(os.getpid(), socket.gethostname(), command, now_iso()))
        yield
    finally:
        lock.release()
