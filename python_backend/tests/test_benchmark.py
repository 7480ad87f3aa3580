"""The benchmark runner end to end on tiny synthetic sites (``--data``), its splits and its statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import SITE_CONTRASTS, TINY_OVERRIDES, write_site

from dakr.benchmark import run_benchmark, user_site_dirs
from dakr.cli import main
from dakr.data.errors import DataError
from dakr.store import Store

TINY_BENCHMARK = {
    "name": "tiny",
    "demo": {},
    "overrides": {k: v for k, v in TINY_OVERRIDES.items() if not k.startswith("continual.buffer_samples")} | {"train.checkpoint_every": 0},
    "strategies": ["finetune", "replay", "dakr"],
    "seeds": 2,
    "buffer_budgets": [8, 4],
    "budget_strategies": ["replay"],
    "matched_compute": True,
    "workers": 2,
    "audit_fraction": 0.34,
    "validation_fraction": 0.25,
    "bootstrap_resamples": 200,
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    for index, (name, contrast) in enumerate(SITE_CONTRASTS.items()):
        write_site(root, name, contrast, cases=6, seed=index)
    return root


@pytest.fixture(scope="module")
def tiny_run(sites: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    config = out / "tiny.json"
    config.write_text(json.dumps(TINY_BENCHMARK))
    run_benchmark(str(config), out, data_dir=sites, sites=list(SITE_CONTRASTS))
    return out, json.loads((out / "results.json").read_text())
