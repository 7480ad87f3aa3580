"""The CLI answers verbs that neither train nor predict without importing torch, MONAI or SimpleITK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dakr.cli import build_parser, main
from dakr.continual.strategies import STRATEGIES
from dakr.continual.strategy_names import STRATEGY_NAMES
from dakr.shipped_configs import benchmark_config_names

BACKEND = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "SimpleITK")
#: Runs ``dakr.cli.main`` on argv and prints which heavy packages got imported.
PROBE = """
import json, sys
from dakr.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def imported_by(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(BACKEND)}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_light_verbs_import_no_heavy_package(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    for argv in (["--help"], ["adapt", "--help"], ["init", store], ["site", "list", store], ["models", store]):
        result = imported_by(*argv)
        assert result == {"code": 0, "heavy": []}, (argv, result)
    refused = imported_by("rollback", store, "1")
    assert refused["code"] == 1 and refused["heavy"] == []


def test_top_level_help_lists_only_public_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "SUPPRESS" not in out and "worker" not in out
    assert "adapt" in out and "serve" in out


def test_benchmark_help_names_every_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"quick", "full", "ablation"} <= set(benchmark_config_names())
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in benchmark_config_names())


def test_strategy_names_match_the_strategy_classes() -> None:
    assert tuple(STRATEGIES) == STRATEGY_NAMES
    assert all(cls.name == name for name, cls in STRATEGIES.items())
    adapt = build_parser()._subparsers._group_actions[0].choices["adapt"]  # type: ignore[union-attr]
    strategy = next(a for a in adapt._actions if a.dest == "strategy")
    assert tuple(strategy.choices) == STRATEGY_NAMES
