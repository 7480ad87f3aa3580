"""``dakr serve --parent-pid``: the server shuts down when the process that started it dies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dakr.service.parent_watch import watch_parent
from dakr.service.processes import pid_running

BACKEND = Path(__file__).resolve().parents[1]


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not pid_running(pid) or (status.exists() and "State:\tZ" in status.read_text())


def test_the_watch_fires_once_the_parent_is_gone() -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    fired = threading.Event()
    watch_parent(parent.pid, interval_s=0.05, on_gone=fired.set)
    assert not fired.wait(0.2), "fired while the parent lived"
    parent.wait()
    assert fired.wait(5)
    assert pid_running(os.getpid())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process reparenting")
def test_a_server_whose_parent_dies_shuts_down(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "dakr", "init", str(tmp_path / "store")], check=True, cwd=BACKEND,
                   capture_output=True, timeout=300)
    launcher = (
        "import os, subprocess, sys, time\n"
        f"server = subprocess.Popen([sys.executable, '-m', 'dakr', 'serve', {str(tmp_path / 'store')!r}, '--port', '0',"
        "  '--parent-pid', str(os.getpid())], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], 'wb'))\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "os._exit(0)\n"
    )
    log = tmp_path / "serve.log"
    done = subprocess.run([sys.executable, "-c", launcher, str(log), "1.0"], capture_output=True, text=True, cwd=BACKEND,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(BACKEND)})
    server_pid = int(done.stdout.strip())
    deadline = time.monotonic() + 120
    while not _gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(server_pid), f"the server outlived its parent; log:\n{log.read_text()}"
    assert "has ended; shutting down" in log.read_text()
