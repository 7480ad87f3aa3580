"""The configuration of one adapt stage, and the one rule that decides where each setting comes from.

- Inherited from the parent version, and fixed for the whole lineage: the network (``net.*``),
  the preprocessing (``preprocess.*``) and the store's label set.
- From the defaults unless set for this run (``--config`` / ``--set`` / the job's ``config``):
  the training schedule (``train.*``) and the strategy settings and weights (``continual.*``).

So a short smoke run never silently shortens the next run, and a version can always be loaded
by the network its ancestors were trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dakr.config import ConfigError, ExperimentConfig, apply_overrides, flatten

if TYPE_CHECKING:
    from dakr.store import VersionInfo

#: Sections that a new version takes from its parent and that must not change after the base model.
INHERITED_SECTIONS = ("net", "preprocess")

#: The rule in one paragraph, shown by ``dakr adapt --help``, the README and every adapt's output.
CONFIG_RULE = (
    "Settings rule: network (net.*), preprocessing (preprocess.*) and the label set are inherited "
    "from the parent version and cannot change after the base model; the training schedule (train.*) "
    "and the strategy settings and weights (continual.*) come from the defaults unless this run sets them "
    "(--config, --set, or the job's config)."
)


def stage_config(parent: VersionInfo | None, overrides: Mapping[str, Any] | None) -> ExperimentConfig:
    """The effective config of a stage trained from ``parent`` (``None`` for the base model).

    Raises :class:`ConfigError` when ``overrides`` try to change an inherited setting.
    """
    overrides = dict(overrides or {})
    if parent is None:
        return apply_overrides(ExperimentConfig(), overrides)
    inherited = flatten(ExperimentConfig.from_dict(parent.config).to_dict())
    fixed = {k: v for k, v in inherited.items() if k.split(".", 1)[0] in INHERITED_SECTIONS}
    requested = flatten(apply_overrides(ExperimentConfig(), {**fixed, **overrides}).to_dict())
    changed = [k for k in overrides if k in fixed and requested[k] != fixed[k]]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} cannot change after the base model: they are fixed by version {parent.id}. "
            "Fix: drop these overrides, or start a new store"
        )
    return apply_overrides(ExperimentConfig(), {**fixed, **overrides})


def non_default_settings(config: ExperimentConfig) -> dict[str, Any]:
    """The dotted settings of ``config`` that differ from the defaults."""
    defaults = flatten(ExperimentConfig().to_dict())
    return {k: v for k, v in flatten(config.to_dict()).items() if defaults[k] != v}


def describe_stage(parent: VersionInfo | None, config: ExperimentConfig) -> list[str]:
    """The lines every adapt prints first: the parent, the rule and the settings that differ from the defaults."""
    origin = "base model (no parent)" if parent is None else f"parent version {parent.id} ({parent.strategy} on {parent.site})"
    changed = non_default_settings(config)
    settings = ", ".join(f"{k}={_show(v)}" for k, v in sorted(changed.items())) if changed else "none (all defaults)"
    return [f"training from: {origin}", CONFIG_RULE, f"settings that differ from the defaults: {settings}"]


def _show(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)
