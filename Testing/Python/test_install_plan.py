"""The install plan: pip's dry run of the backend's requirements against what is installed, and the
refusal when it would change an installed package. In the Python 3.12 venv standing in for Slicer's
Python (``make test-slicer-python``) the plan is worked out against Slicer's bundled numpy, scipy and
SimpleITK."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO
from DAKRSegmentationLib.backend import backend_requirements, torch_requirement
from DAKRSegmentationLib.install_plan import InstallPlan, PlannedPackage, installed_versions, plan_install, write_constraints
IN_STAND_IN = os.environ.get("DAKR_SLICER_STAND_IN") == "1"
#: Slicer 5.10's bundled versions (SuperBuild/requirements: python-numpy.txt, python-scipy.txt, python-SimpleITK.txt).
SLICER_BUNDLED = {"numpy": "2.3.4", "scipy": "1.16.3", "simpleitk": "2.5.3"}


def test_a_plan_that_changes_an_installed_package_is_refused() -> None:
    plan = InstallPlan([PlannedPackage("monai", "1.6.1", None), PlannedPackage("numpy", "2.4.6", "2.3.4")])
    assert [p.name for p in plan.new] == ["monai"] and [p.name for p in plan.changed] == ["numpy"]
    refusal = plan.refusal()
    assert "numpy 2.3.4 → 2.4.6" in refusal and "Nothing was installed." in refusal and "Fix:" in refusal
    assert InstallPlan([PlannedPackage("monai", "1.6.1", None), PlannedPackage("numpy", "2.3.4", "2.3.4")]).refusal() is None


def test_pip_dry_run_reports_a_downgrade_as_a_change_and_installs_nothing() -> None:
    installed = metadata.version("pytest")
    assert plan_install(sys.executable, [f"pytest=={installed}"]).packages == []
    major, minor = (int(part) for part in installed.split(".")[:2])
    plan = plan_install(sys.executable, [f"pytest<{major}.{minor}"])
    (change,) = plan.changed
    assert change.name.lower() == "pytest" and change.installed == installed
    assert metadata.version("pytest") == installed, "a dry run must not install"


def test_constraints_pin_every_installed_package(tmp_path: Path) -> None:
    versions = installed_versions(sys.executable)
    pins = write_constraints(versions, tmp_path / "c.txt").read_text().split()
    assert f"pytest=={metadata.version('pytest')}" in pins and len(pins) == len(versions)


def _metadata_only_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel with only the metadata of ``name`` (nothing importable): the PyTorch extension's torch,
    which cannot be installed into this CPU-only 3.12 test venv."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.mark.skipif(not IN_STAND_IN, reason="runs in the Python 3.12 Slicer stand-in venv (make test-slicer-python)")
def test_backend_requirements_leave_slicers_bundled_packages_alone(tmp_path: Path) -> None:
    assert sys.version_info[:2] == (3, 12)
    assert {name: metadata.version(name) for name in SLICER_BUNDLED} == SLICER_BUNDLED
    # A Python seeing the stand-in's packages, plus the torch the PyTorch extension would have installed.
    python_dir = tmp_path / "slicer-python"
    subprocess.run([sys._base_executable, "-m", "venv", str(python_dir)], check=True, timeout=300)
    python = python_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stand_in_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "numpy").is_dir())
    Path(site, "slicer-stand-in.pth").write_text(stand_in_site + "\n")
    minimum = torch_requirement(REPO / "python_backend" / "pyproject.toml").split(">=")[1].split(",")[0]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(_metadata_only_wheel(tmp_path, "torch", minimum + ".0"))], check=True, timeout=300)

    plan = plan_install(str(python), backend_requirements(REPO / "python_backend" / "pyproject.toml"))

    assert plan.refusal() is None, plan.refusal()
    planned = {package.name.lower() for package in plan.packages}
    assert not planned & (set(SLICER_BUNDLED) | {"torch"})
    assert {"monai", "fastapi", "uvicorn", "safetensors"} <= planned
    assert {name: metadata.version(name) for name in SLICER_BUNDLED} == SLICER_BUNDLED
