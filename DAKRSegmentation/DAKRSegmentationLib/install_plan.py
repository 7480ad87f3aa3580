"""What installing the backend's requirements into Slicer's Python would do, worked out before anything
is installed (``pip install --dry-run --report``), and the refusal when it would change a package that
is already there (Slicer's numpy, scipy, SimpleITK, or what another extension installed)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: How long pip may take to resolve the requirements (it may download wheels to read their metadata).
PLAN_TIMEOUT_S = 600.0


def name_key(name: str) -> str:
    """A distribution name normalised as pip compares them (``Simple_ITK`` → ``simple-itk``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class PlannedPackage:
    """One package pip would install; ``installed`` is the version present now (``None``: new)."""

    name: str
    version: str
    installed: str | None

    @property
    def changes_existing(self) -> bool:
        return self.installed is not None and self.installed != self.version


@dataclass
class InstallPlan:
    """The packages a ``pip install`` of the requirements would add or replace."""

    packages: list[PlannedPackage]

    @property
    def new(self) -> list[PlannedPackage]:
        return [package for package in self.packages if package.installed is None]

    @property
    def changed(self) -> list[PlannedPackage]:
        return [package for package in self.packages if package.changes_existing]

    def refusal(self) -> str | None:
        """Why this plan must not run (it replaces installed packages), or ``None`` when it only adds."""
        if not self.changed:
            return None
        lines = [f"{p.name} {p.installed} → {p.version}" for p in self.changed]
        return ("Installing the DAKR backend's requirements would change packages that Slicer or other extensions "
                "already use:\n\n" + "\n".join(lines) + "\n\nNothing was installed. Fix: use a remote backend (a separate "
                "Python with `pip install dakr`), or update Slicer/the extension that brought these packages.")

    def summary(self) -> str:
        """One line per new package, for the confirmation dialog."""
        return "\n".join(f"{p.name} {p.version}" for p in self.new)


def _run_pip(python: str, arguments: list[str], timeout_s: float) -> str:
    command = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"pip did not finish working out the install plan within {timeout_s:.0f} s "
                           "(slow or unreachable package index). Fix: check the network, then connect again") from None
    if done.returncode != 0:
        raise RuntimeError(f"pip cannot work out how to install the backend's requirements:\n{done.stderr.strip()[-2000:]}")
    return done.stdout


def installed_versions(python: str, timeout_s: float = 120.0) -> dict[str, str]:
    """Every distribution installed for ``python``: normalised name → version."""
    listing = json.loads(_run_pip(python, ["list", "--format=json"], timeout_s))
    return {name_key(item["name"]): item["version"] for item in listing}


def plan_install(python: str, requirements: list[str], timeout_s: float = PLAN_TIMEOUT_S) -> InstallPlan:
    """What ``pip install REQUIREMENTS`` would do for ``python``, without installing anything."""
    if not requirements:
        return InstallPlan([])
    installed = installed_versions(python)
    report = json.loads(_run_pip(python, ["install", "--dry-run", "--quiet", "--report", "-", *requirements], timeout_s))
    packages = [
        PlannedPackage(item["metadata"]["name"], item["metadata"]["version"], installed.get(name_key(item["metadata"]["name"])))
        for item in report.get("install", [])
    ]
    return InstallPlan(packages)


def install(python: str, requirements: list[str], constraints: Path,
            on_line: Callable[[str], None] | None = None, cancelled: Callable[[], bool] | None = None) -> None:
    """``pip install -c CONSTRAINTS REQUIREMENTS`` for ``python`` in a child process (blocking: run it on
    a worker thread); each output line goes to ``on_line``; ``cancelled()`` stops pip."""
    command = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install", "-c", str(constraints),
               *requirements]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, bufsize=1)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if on_line is not None:
            on_line(line.rstrip())
        if cancelled is not None and cancelled():
            process.terminate()
            process.wait()
            raise RuntimeError("Installing the backend's packages was cancelled; packages pip had finished stay "
                               "installed. Connect again to finish.")
    if process.wait() != 0:
        raise RuntimeError("pip could not install the backend's packages (nothing installed was changed: every "
                           "installed package was pinned). pip said:\n" + "\n".join(tail))


def write_constraints(installed: dict[str, str], path: Path) -> Path:
    """A pip constraints file pinning every installed package, so the install can only add packages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(installed.items())), encoding="utf-8")
    return path
