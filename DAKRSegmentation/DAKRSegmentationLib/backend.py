"""Starting and stopping a local backend (``<python> -m dakr serve STORE``) and its Python requirements.

In Slicer the Python is ``PythonSlicer``; the ``dakr`` package ships inside the extension, next to
the module (or in ``python_backend/`` of a source checkout), and reaches the child via ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .client import BackendClient, BackendError
from .install_plan import name_key

#: Installed by the PyTorch extension (with the right CUDA build), never by pip from here.
TORCH = "torch"


def backend_location(module_dir: Path) -> tuple[Path, Path]:
    """The folder to put on ``PYTHONPATH`` so ``import dakr`` works, and the backend's ``pyproject.toml``.

    Installed extension: ``dakr/`` and ``dakr-pyproject.toml`` next to the module file.
    Source checkout: ``python_backend/`` next to the module folder.
    """
    module_dir = Path(module_dir)
    installed = module_dir / "dakr" / "__init__.py"
    if installed.exists():
        return module_dir, module_dir / "dakr-pyproject.toml"
    source = module_dir.parent / "python_backend"
    if (source / "dakr" / "__init__.py").exists():
        return source, source / "pyproject.toml"
    raise FileNotFoundError(
        f"the DAKR backend package is missing next to {module_dir}. Fix: reinstall the DAKRSegmentation extension"
    )


def _dependencies(pyproject: Path) -> list[Requirement]:
    return [Requirement(text) for text in tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]["dependencies"]]


def backend_requirements(pyproject: Path) -> list[str]:
    """The backend server's requirements (ranges) except torch, which the PyTorch extension installs."""
    return [str(requirement) for requirement in _dependencies(pyproject) if name_key(requirement.name) != TORCH]


def torch_requirement(pyproject: Path) -> str | None:
    """The torch versions the backend was tested with, as a specifier such as ``"<3,>=2.13"``."""
    for requirement in _dependencies(pyproject):
        if name_key(requirement.name) == TORCH:
            return str(requirement.specifier) or None
    return None


def torch_too_old(installed: str, requirement: str | None) -> bool:
    """Whether an installed torch (e.g. ``"2.4.1+cu121"``) is older than the tested minimum of ``requirement``."""
    version = Version(Version(installed).public)
    return any(spec.operator == ">=" and version < Version(spec.version) for spec in SpecifierSet(requirement or ""))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _process_options(new_group: bool) -> dict:
    """No console window on Windows; the server in its own process group so it can be stopped as a tree."""
    if sys.platform == "win32":
        flags = subprocess.CREATE_NO_WINDOW | (subprocess.CREATE_NEW_PROCESS_GROUP if new_group else 0)
        return {"creationflags": flags}
    return {"start_new_session": new_group}


class LocalBackend:
    """One ``dakr serve`` child process on loopback with a random token.

    ``start`` initialises the store if needed and returns once the server process runs; poll
    :meth:`ready` (from a timer) or call :meth:`wait_until_ready`. The token travels in a file
    readable only by the user, not on the command line; log and token live in ``run_dir``.
    """

    def __init__(self, python: str | Path, store: Path, pythonpath: Path, run_dir: Path,
                 port: int | None = None, environment: dict[str, str] | None = None) -> None:
        self.python = str(python)
        self.store = Path(store)
        self.pythonpath = Path(pythonpath)
        self.run_dir = Path(run_dir)
        self.log_file = self.run_dir / "dakr-serve.log"
        self.token_file = self.run_dir / "dakr-serve.token"
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.token = secrets.token_urlsafe(24)
        self.environment = dict(environment if environment is not None else os.environ)
        self.process: subprocess.Popen | None = None
        #: Bytes of the log already handed out by :meth:`new_log_lines`.
        self.log_offset = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The server's command line: the token travels in a file, and the server exits when this
        process (Slicer) dies."""
        return [self.python, "-m", "dakr", "serve", str(self.store), "--host", self.host, "--port", str(self.port),
                "--token-file", str(self.token_file), "--parent-pid", str(os.getpid())]

    def client(self) -> BackendClient:
        return BackendClient(self.url, self.token)

    def _child_environment(self) -> dict[str, str]:
        environment = dict(self.environment)
        paths = [str(self.pythonpath)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
        environment["PYTHONUNBUFFERED"] = "1"
        return environment

    def start(self) -> None:
        """Initialise the store (``dakr init``, a no-op for an existing store) and start the server."""
        if self.running():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        init = subprocess.run([self.python, "-m", "dakr", "init", str(self.store)], capture_output=True, text=True,
                              env=self._child_environment(), stdin=subprocess.DEVNULL, timeout=300, check=False,
                              **_process_options(new_group=False))
        if init.returncode != 0:
            raise BackendError(f"Cannot use {self.store} as the model store:\n{(init.stderr or init.stdout).strip()}")
        self.log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.token_file.write_text(self.token, encoding="utf-8")
        self.token_file.chmod(0o600)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._child_environment(), **_process_options(new_group=True))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def ready(self) -> bool:
        """One quick ``/info`` probe; raises :class:`BackendError` if the process has exited."""
        if not self.running():
            code = None if self.process is None else self.process.returncode
            raise BackendError(
                f"The local backend stopped (exit code {code}). Its log ({self.log_file}) ends with:\n{self.log_tail()}"
            )
        try:
            BackendClient(self.url, self.token, timeout_s=1.0).info()
        except BackendError as error:
            if error.status == 0:
                return False
            raise
        return True

    def new_log_lines(self) -> list[str]:
        """Lines the server wrote to its log since the previous call (for the module's log panel)."""
        if not self.log_file.exists():
            return []
        with self.log_file.open("rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()

    def wait_until_ready(self, timeout_s: float = 120.0, cancelled: Callable[[], bool] | None = None) -> None:
        """Block until the server answers (on a worker thread); stops it on timeout or cancellation."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if cancelled is not None and cancelled():
                self.stop()
                raise BackendError("Starting the local backend was cancelled.")
            if time.monotonic() > deadline:
                self.stop()
                raise BackendError(f"The local backend started but did not answer within {timeout_s:.0f} s (the first "
                                   f"start imports PyTorch and MONAI). Its log ({self.log_file}) ends with:\n{self.log_tail()}")
            time.sleep(0.25)

    def terminate(self) -> None:
        """Ask the server and its process tree to stop, without waiting (for application exit)."""
        if self.process is None or self.process.poll() is not None:
            return
        if sys.platform == "win32":
            subprocess.Popen(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **_process_options(new_group=False))
        else:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server and every process it started (its job workers included)."""
        if self.process is None or self.process.poll() is not None:
            return
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], capture_output=True, check=False)
        else:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(grace_s)
