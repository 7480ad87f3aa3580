"""Stop the server when the process that started it (the Slicer module) has died, so a crashed
Slicer leaves no server holding the store. Stopping goes through the normal shutdown (the signal
uvicorn handles), so running job workers are interrupted and stay resumable."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Callable

from dakr.service.processes import pid_running

log = logging.getLogger(__name__)


def _shut_down() -> None:
    signal.raise_signal(signal.SIGINT if sys.platform == "win32" else signal.SIGTERM)


def watch_parent(pid: int, interval_s: float = 1.0, on_gone: Callable[[], None] = _shut_down) -> threading.Thread:
    """Check every ``interval_s`` that process ``pid`` lives; when it is gone call ``on_gone`` once
    (default: shut this server down as Ctrl+C would)."""

    def watch() -> None:
        stop = threading.Event()
        while pid_running(pid):
            stop.wait(interval_s)
        log.warning("dakr serve: the process that started this server (pid %d) has ended; shutting down", pid)
        print(f"dakr serve: the process that started this server (pid {pid}) has ended; shutting down",
              file=sys.stderr, flush=True)
        on_gone()

    thread = threading.Thread(target=watch, name="dakr-parent-watch", daemon=True)
    thread.start()
    return thread
