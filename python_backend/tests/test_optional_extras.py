"""Report and demo packages are optional extras: without them the server layers import, and the
report or demo names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[1]
HIDE = "import sys; sys.modules['{module}'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=BACKEND)


@pytest.mark.parametrize(("module", "importer", "extra"), [
    ("matplotlib", "import dakr.evaluation.report", "report"),
    ("matplotlib", "import dakr.evaluation.benchmark_report", "report"),
    ("nilearn", "from dakr.demo.anatomy import template_fractions; template_fractions.__wrapped__()", "demo"),
])
def test_a_missing_extra_is_named_with_its_fix(module: str, importer: str, extra: str) -> None:
    done = _run(HIDE.format(module=module) + importer)
    assert done.returncode != 0
    assert f"needs the optional package '{module}" in done.stderr and f"Fix: pip install 'dakr[{extra}]'" in done.stderr


def test_the_server_imports_without_report_and_demo_packages() -> None:
    code = HIDE.format(module="matplotlib") + HIDE.format(module="nilearn") + "import dakr.service.app; print('ok')"
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
