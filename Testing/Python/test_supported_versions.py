"""One minimum Slicer version (and its Python) stated alike in the README, the module's help, the
extension's CMake and the CMake stand-in of Slicer; an older Slicer fails the configure."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import slicer_gui_doubles as doubles
from conftest import REPO
from DAKRSegmentationLib import MINIMUM_PYTHON_VERSION, MINIMUM_SLICER_VERSION
from test_extension_layout import STAND_IN, configure, copy_extension

SLICER = ".".join(map(str, MINIMUM_SLICER_VERSION))
PYTHON = ".".join(map(str, MINIMUM_PYTHON_VERSION))


def test_readme_install_section_states_the_minimum() -> None:
    install = REPO.joinpath("README.md").read_text().split("## Install in Slicer", 1)[1].split("\n## ", 1)[0]
    assert f"Slicer {SLICER} or later (Python {PYTHON}" in install
    assert not re.search(r"Slicer 5\.[0-9]\b or later", install.replace(f"Slicer {SLICER} or later", ""))


def test_cmake_and_the_stand_in_use_the_same_minimum() -> None:
    assert f'set(DAKR_MINIMUM_SLICER_VERSION "{SLICER}")' in REPO.joinpath("CMakeLists.txt").read_text()
    stand_in = REPO.joinpath("Testing", "CMake", "SlicerConfig.cmake").read_text()
    assert f'set(STAND_IN_SLICER_VERSION "{SLICER}.0")' in stand_in
    assert f'set(Slicer_REQUIRED_PYTHON_VERSION "{PYTHON}")' in stand_in


def test_module_help_states_the_minimum(monkeypatch, scene, tmp_path: Path) -> None:
    doubles.install(monkeypatch, scene, tmp_path)
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)
    module = importlib.import_module("DAKRSegmentation")
    parent = types.SimpleNamespace()
    module.DAKRSegmentation(parent)
    assert f"Needs Slicer {SLICER} or later (Python {PYTHON})." in parent.helpText
    monkeypatch.delitem(sys.modules, "DAKRSegmentation", raising=False)


def test_an_older_slicer_fails_the_configure(tmp_path: Path) -> None:
    source = copy_extension(tmp_path / "src")
    result = subprocess.run(["cmake", "-S", str(source), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={STAND_IN}",
                             "-DSTAND_IN_SLICER_VERSION=5.8.1"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert f"needs Slicer {SLICER} or later (Python {PYTHON}); this is Slicer 5.8.1" in " ".join(result.stderr.split())
    assert configure(source, tmp_path / "build-ok").returncode == 0
