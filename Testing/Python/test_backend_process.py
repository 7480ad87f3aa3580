"""The local backend process (start, token file, store initialisation, failure reports, stopping the
process tree) with a stand-in Python (a POSIX shell script), and the backend's requirements as the
module installs them."""

from __future__ import annotations

import os
import stat
import time
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO
from DAKRSegmentationLib import backend as backend_module
from DAKRSegmentationLib.backend import LocalBackend
from DAKRSegmentationLib.client import BackendError
from stand_in_python import stand_in_python

def test_server_is_started_with_a_private_token_file_and_the_backend_on_pythonpath(tmp_path: Path) -> None:
    python = stand_in_python(tmp_path, serve="sleep 30")
    backend = LocalBackend(python, tmp_path / "store", tmp_path / "backend-src", tmp_path / "run",
                           environment={"PATH": os.environ["PATH"], "PYTHONPATH": "/elsewhere"})
    backend.start()
    try:
        deadline = time.monotonic() + 10
        while len((tmp_path / "calls.txt").read_text().splitlines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        calls = (tmp_path / "calls.txt").read_text().splitlines()
        assert calls[0] == f"-m dakr init {tmp_path / 'store'}"
        assert calls[2] == (f"-m dakr serve {tmp_path / 'store'} --host 127.0.0.1 --port {backend.port} "
                            f"--token-file {backend.token_file}")
        assert calls[3] == f"PYTHONPATH={tmp_path / 'backend-src'}{os.pathsep}/elsewhere"
        assert backend.token not in " ".join(calls), "the token must not appear on a command line"
        assert backend.token_file.read_text() == backend.token
        assert stat.S_IMODE(backend.token_file.stat().st_mode) == 0o600
        assert backend.running() and not backend.ready()
    finally:
        backend.stop()
    assert not backend.running()


def test_a_server_that_exits_is_reported_with_its_exit_code_and_log(tmp_path: Path) -> None:
    backend = LocalBackend(stand_in_python(tmp_path), tmp_path / "store", tmp_path, tmp_path / "run")
    backend.start()
    with pytest.raises(BackendError, match=r"The local backend stopped \(exit code 3\)\. Its log .*dakr-serve\.log\) ends with:\ndakr serve: port in use"):
        backend.wait_until_ready(timeout_s=10)


def test_a_store_folder_that_cannot_be_used_is_explained(tmp_path: Path) -> None:
    python = stand_in_python(tmp_path, init="echo 'dakr init: /x is a non-empty folder that is not a DAKR store. Fix: choose a new folder' >&2; exit 2")
    backend = LocalBackend(python, tmp_path / "store", tmp_path, tmp_path / "run")
    with pytest.raises(BackendError, match=r"Cannot use .*store as the model store:\ndakr init: /x is a non-empty folder.*Fix: choose"):
        backend.start()
    assert backend.process is None


def test_stop_ends_the_server_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    python = stand_in_python(tmp_path, serve=f"sleep 60 & echo $! > {pid_file}; wait")
    backend = LocalBackend(python, tmp_path / "store", tmp_path, tmp_path / "run")
    backend.start()
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    backend.stop(grace_s=5)
    assert not backend.running()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "a child of the server survived stop()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_requirements_exclude_what_slicer_and_the_pytorch_extension_provide() -> None:
    pyproject = REPO / "python_backend" / "pyproject.toml"
    requirements = backend_module.backend_requirements(pyproject)
    names = {requirement.split("==")[0].lower() for requirement in requirements}
    assert "fastapi" in names and "monai" in names
    assert not names & {"numpy", "simpleitk", "torch"}
    assert backend_module.torch_requirement(pyproject).startswith(">=2.")


def test_missing_requirements_compares_installed_versions() -> None:
    installed = metadata.version("pytest")
    assert backend_module.missing_requirements([f"pytest=={installed}", "pytest", f"PyTest=={installed}"]) == []
    assert backend_module.missing_requirements(["pytest==0.0.1", "surely-not-installed-dakr-pkg==1.0"]) == [
        "pytest==0.0.1", "surely-not-installed-dakr-pkg==1.0"]


def test_constraints_pin_the_shared_packages_to_what_is_installed() -> None:
    pins = backend_module.shared_package_constraints().split()
    assert f"numpy=={metadata.version('numpy')}" in pins
    assert f"simpleitk=={metadata.version('SimpleITK')}" in pins
    assert f"torch=={metadata.version('torch')}" in pins


def test_backend_is_found_in_the_source_tree_and_in_an_installed_module(tmp_path: Path) -> None:
    assert backend_module.backend_location(REPO / "DAKRSegmentation") == (
        REPO / "python_backend", REPO / "python_backend" / "pyproject.toml")
    (tmp_path / "dakr").mkdir()
    (tmp_path / "dakr" / "__init__.py").write_text("")
    assert backend_module.backend_location(tmp_path) == (tmp_path, tmp_path / "dakr-pyproject.toml")
    with pytest.raises(FileNotFoundError, match="reinstall the DAKRSegmentation extension"):
        backend_module.backend_location(tmp_path / "nowhere")
