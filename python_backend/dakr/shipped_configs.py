"""The configuration files shipped inside the package (``dakr/configs/*.json``), found without importing torch."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_BENCHMARK_PREFIX = "benchmark_"


def configs_dir() -> Path:
    """The folder holding the shipped JSON configs."""
    return Path(str(resources.files("dakr") / "configs"))


def benchmark_config_names() -> list[str]:
    """Names accepted by ``dakr benchmark --config`` besides a file path, e.g. ``quick``, ``full``, ``ablation``."""
    return sorted(p.stem[len(_BENCHMARK_PREFIX):] for p in configs_dir().glob(f"{_BENCHMARK_PREFIX}*.json"))


def benchmark_config_path(name: str) -> Path:
    """The shipped benchmark config called ``name`` (may not exist)."""
    return configs_dir() / f"{_BENCHMARK_PREFIX}{name}.json"
