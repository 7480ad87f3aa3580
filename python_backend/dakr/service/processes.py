"""Starting, signalling and probing worker processes, the same way on POSIX and Windows.

Each worker runs in its own process group (POSIX session / Windows process group), so a
signal meant for the server never reaches it and stopping a job reaches every process the
worker started (e.g. data loader workers).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

#: Keyword arguments for ``subprocess.Popen`` that put the child into a new process group.
SPAWN_OPTIONS: dict[str, Any] = (
    {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
)


def request_stop(pid: int) -> None:
    """Ask the worker group led by ``pid`` to stop (SIGTERM; CTRL_BREAK on Windows)."""
    try:
        if os.name == "nt":
            os.kill(pid, signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def kill(pid: int) -> None:
    """Kill the worker group led by ``pid`` at once (SIGKILL; TerminateProcess on Windows)."""
    try:
        if os.name == "nt":
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs."""
    if os.name == "nt":
        return _windows_process_running(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_worker_alive(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still the worker of ``job_id`` (a reused pid of another program is not)."""
    if not process_alive(pid):
        return False
    if os.name == "nt":
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        return job_id.encode() in cmdline.read_bytes().split(b"\0")
    except OSError:
        return False


def parent_gone(parent_pid: int) -> bool:
    """Whether the process that started this one (the server) has exited."""
    if os.name == "nt":
        return not _windows_process_running(parent_pid)
    return os.getppid() != parent_pid


def _windows_process_running(pid: int) -> bool:
    import ctypes

    query_limited_information, still_active = 0x1000, 259
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
    finally:
        kernel32.CloseHandle(handle)
