"""The extension as Slicer's build and the Extensions Index see it: CMake configure against a
test-only stand-in for Slicer's config (Testing/CMake), and the index description file rules."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import MODULE_DIR, REPO

STAND_IN = REPO / "Testing" / "CMake"
BACKEND = REPO / "python_backend"
RAW_URL = re.compile(r"^https://raw\.githubusercontent\.com/(?P<owner>[^/]+)/(?P<repo>[^/]+)/(?P<branch>[^/]+)/(?P<path>.+)$")
#: The Extensions Index catalog entry schema v1.0.2: its properties and their JSON types (no others allowed).
SCHEMA_VERSION = "1.0.2"
SCHEMA_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str,
                     "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
#: Extension tiers: 1 experimental, 3 community-supported, 5 maintained with Slicer core.
SCHEMA_TIERS = {1, 3, 5}


def configure(source: Path, build: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={STAND_IN}"],
                          capture_output=True, text=True, timeout=300, check=False)


def copy_extension(destination: Path) -> Path:
    """The files the extension's CMake reads, copied so a test may break them."""
    destination.mkdir(parents=True)
    shutil.copy2(REPO / "CMakeLists.txt", destination / "CMakeLists.txt")
    shutil.copytree(MODULE_DIR, destination / "DAKRSegmentation", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BACKEND / "dakr", destination / "python_backend" / "dakr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(BACKEND / "pyproject.toml", destination / "python_backend" / "pyproject.toml")
    return destination


def _files(root: Path, folder: str, pattern: str) -> list[str]:
    """Files matching ``pattern`` anywhere under ``root/folder``, relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in (root / folder).rglob(pattern)
                  if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> dict:
    build = tmp_path_factory.mktemp("build")
    result = configure(REPO, build)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((build / "extension-manifest.json").read_text())
    manifest["_build"] = build
    return manifest


def _cmake_value(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text())
    assert match, f"{name} not set in CMakeLists.txt"
    return match.group(1)


def test_configure_lists_every_module_script_and_resource(manifest) -> None:
    assert manifest["modules"] == ["DAKRSegmentation"]
    assert sorted(manifest["module_scripts"]) == _files(MODULE_DIR, ".", "*.py"), "every module .py must be listed (and exist)"
    assert sorted(manifest["module_resources"]) == _files(MODULE_DIR, "Resources", "*"), "every resource must be listed"
    assert manifest["unittests"] == ["DAKRSegmentation.py"]
    assert manifest["generic_tests"] == ["DAKRSegmentation"], "WITH_GENERIC_TESTS adds Slicer's generic module tests"


def test_the_backend_package_ships_with_the_module(manifest) -> None:
    assert sorted(manifest["shipped_scripts"]) == _files(BACKEND, "dakr", "*.py")
    module_dir = manifest["_build"] / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    assert (module_dir / "dakr-pyproject.toml").read_text() == (BACKEND / "pyproject.toml").read_text()
    for data in _files(BACKEND, "dakr", "*.json"):
        assert (module_dir / data).read_bytes() == (BACKEND / data).read_bytes()


def test_extension_metadata(manifest) -> None:
    assert manifest["project"] == ["DAKRSegmentation"]
    assert manifest["category"] == ["Segmentation"]
    assert manifest["depends"] == ["PyTorch"]
    assert len(manifest["description"][0]) > 80
    assert manifest["screenshoturls"], "at least one screenshot"


@pytest.mark.parametrize("missing", ["DAKRSegmentation/DAKRSegmentationLib/jobs.py",
                                     "DAKRSegmentation/Resources/UI/DAKRSegmentation.ui",
                                     "DAKRSegmentation/DAKRSegmentation.py"])
def test_a_missing_listed_file_fails_the_configure(tmp_path: Path, missing: str) -> None:
    source = copy_extension(tmp_path / "src")
    (source / missing).unlink()
    result = configure(source, tmp_path / "build")
    assert result.returncode != 0
    assert f"nonexistent file '{Path(missing).relative_to('DAKRSegmentation')}'" in " ".join(result.stderr.split())


def test_an_unset_extension_value_fails_the_configure(tmp_path: Path) -> None:
    source = copy_extension(tmp_path / "src")
    cmake = source / "CMakeLists.txt"
    cmake.write_text(re.sub(r'set\(EXTENSION_ICONURL "[^"]*"\)', "", cmake.read_text()))
    result = configure(source, tmp_path / "build")
    assert result.returncode != 0 and "EXTENSION_ICONURL is not set" in " ".join(result.stderr.split())


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _local_file_of(url: str) -> Path:
    match = RAW_URL.match(url)
    assert match, f"{url} is not a raw GitHub URL"
    return REPO / match.group("path")


def schema_problems(entry: dict) -> list[str]:
    """What in a catalog entry breaks the schema rules above (empty when it follows them)."""
    problems = [f"missing {key}" for key in sorted(SCHEMA_REQUIRED - set(entry))]
    problems += [f"unknown key {key}" for key in sorted(set(entry) - set(SCHEMA_PROPERTIES))]
    problems += [f"{key} must be a {SCHEMA_PROPERTIES[key].__name__}" for key, value in entry.items()
                 if key in SCHEMA_PROPERTIES and type(value) is not SCHEMA_PROPERTIES[key]]
    if "tier" in entry and entry["tier"] not in SCHEMA_TIERS:
        problems.append(f"tier must be one of {sorted(SCHEMA_TIERS)}")
    if not all(isinstance(name, str) for name in entry.get("build_dependencies", [])):
        problems.append("build_dependencies must be names")
    if not re.fullmatch(r"https://\S+|git@\S+", str(entry.get("scm_url", ""))):
        problems.append("scm_url must be an https or git@ URL")
    return problems


@pytest.mark.parametrize(("change", "problem"), [
    ({"scm_type": "git"}, "unknown key scm_type"), ({"tier": 2}, "tier must be one of [1, 3, 5]"),
    ({"tier": True}, "tier must be a int"), ({"enabled": 1}, "enabled must be a bool"),
    ({"scm_url": "ftp://x"}, "scm_url must be an https or git@ URL")])
def test_the_schema_check_finds_what_breaks_the_rules(change: dict, problem: str) -> None:
    entry = {**json.loads((REPO / "DAKRSegmentation.json").read_text()), **change}
    assert problem in schema_problems(entry)
    assert schema_problems({"category": "x", "scm_url": "https://x"}) == ["missing $schema"]


def test_index_description_file_follows_the_catalog_rules() -> None:
    entry_file = REPO / "DAKRSegmentation.json"
    entry = json.loads(entry_file.read_text())
    assert schema_problems(entry) == []
    assert entry["$schema"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                f"slicer-extension-catalog-entry-schema-v{SCHEMA_VERSION}.json#")
    assert "tier" in entry
    project = re.search(r"^project\((\w+)\)", (REPO / "CMakeLists.txt").read_text(), re.MULTILINE).group(1)
    assert project == entry_file.stem, "project() name must equal the description file name"
    assert entry["category"] == _cmake_value("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == _cmake_value("EXTENSION_DEPENDS").split()
    repository = re.fullmatch(r"https://github\.com/[\w.-]+/([\w.-]+?)(\.git)?", entry["scm_url"]).group(1)
    assert "Slicer" in repository, "the repository name must contain 'Slicer'"
    assert _cmake_value("EXTENSION_HOMEPAGE").startswith(entry["scm_url"].removesuffix(".git"))


def test_icon_and_screenshot_urls_name_images_in_this_repository() -> None:
    scm = json.loads((REPO / "DAKRSegmentation.json").read_text())["scm_url"].removesuffix(".git")
    owner_repo = scm.removeprefix("https://github.com/")
    urls = [_cmake_value("EXTENSION_ICONURL")] + _cmake_value("EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        match = RAW_URL.match(url)
        assert match and f"{match.group('owner')}/{match.group('repo')}" == owner_repo, url
        assert match.group("branch") == json.loads((REPO / "DAKRSegmentation.json").read_text())["scm_revision"]
        assert url.endswith(".png") and _local_file_of(url).is_file(), f"{url} has no file in the repository"
        _png_size(_local_file_of(url))
    icon = _local_file_of(urls[0])
    assert icon == MODULE_DIR / "Resources" / "Icons" / "DAKRSegmentation.png"
    assert _png_size(icon) == (128, 128)


def test_license_is_the_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text()
    for phrase in ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert phrase in text
    assert len(text.splitlines()) > 170, "the full licence text, not a reference to it"
