"""The local backend process (start, token file, store initialisation, failure reports, stopping the
process tree) with a stand-in Python (a POSIX shell script), and the backend's requirements as the
module installs them."""

from __future__ import annotations

import os
import stat
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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
                            f"--token-file {backend.token_file} --parent-pid {os.getpid()}")
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


def test_requirements_are_ranges_without_torch_and_without_demo_or_report_packages() -> None:
    pyproject = REPO / "python_backend" / "pyproject.toml"
    requirements = [Requirement(text) for text in backend_module.backend_requirements(pyproject)]
    names = {requirement.name.lower() for requirement in requirements}
    assert {"fastapi", "monai", "numpy", "simpleitk", "scipy"} <= names
    assert not names & {"torch", "nilearn", "matplotlib"}
    for requirement in requirements:
        operators = {spec.operator for spec in requirement.specifier}
        assert operators == {">=", "<"}, f"{requirement} must be a range: >= tested minimum, < next major"
    bundled = {"numpy": "2.3.4", "scipy": "1.16.3", "simpleitk": "2.5.3"}
    for requirement in requirements:
        if requirement.name.lower() in bundled:
            assert requirement.specifier.contains(bundled[requirement.name.lower()]), f"{requirement} rejects Slicer's own"
    assert backend_module.torch_requirement(pyproject) in ("<3,>=2.13", ">=2.13,<3")


def test_demo_and_report_packages_are_optional_extras() -> None:
    project = tomllib.loads((REPO / "python_backend" / "pyproject.toml").read_text())["project"]
    extras = {name: {Requirement(text).name.lower() for text in values} for name, values in project["optional-dependencies"].items()}
    assert extras["report"] == {"matplotlib"}
    assert extras["demo"] == {"nilearn", "matplotlib"}


def test_the_project_venv_is_pinned_by_the_constraints_file() -> None:
    pins = {}
    for line in (REPO / "python_backend" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "python_backend" / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [text for values in project["optional-dependencies"].values() for text in values]
    for text in declared:
        requirement = Requirement(text)
        key = requirement.name.lower().replace("_", "-")
        if key == "torch":
            continue
        assert key in pins, f"{requirement.name} has no exact pin in constraints.txt"
        assert requirement.specifier.contains(pins[key]), f"pin {key}=={pins[key]} is outside {requirement}"
    makefile = (REPO / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile and makefile.count("-c $(CONSTRAINTS)") == 2


@pytest.mark.parametrize(("installed", "too_old"), [("2.4.1+cu121", True), ("2.12.9", True), ("2.13.0", False),
                                                   ("2.13.0+cpu", False), ("2.14.1", False)])
def test_an_older_torch_is_detected(installed: str, too_old: bool) -> None:
    assert backend_module.torch_too_old(installed, ">=2.13,<3") is too_old


def test_backend_is_found_in_the_source_tree_and_in_an_installed_module(tmp_path: Path) -> None:
    assert backend_module.backend_location(REPO / "DAKRSegmentation") == (
        REPO / "python_backend", REPO / "python_backend" / "pyproject.toml")
    (tmp_path / "dakr").mkdir()
    (tmp_path / "dakr" / "__init__.py").write_text("")
    assert backend_module.backend_location(tmp_path) == (tmp_path, tmp_path / "dakr-pyproject.toml")
    with pytest.raises(FileNotFoundError, match="reinstall the DAKRSegmentation extension"):
        backend_module.backend_location(tmp_path / "nowhere")
