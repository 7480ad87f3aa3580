"""The config rule of adapt stages: network and preprocessing inherited, schedule and strategy from the defaults."""

from __future__ import annotations

import pytest

from dakr.cli import main
from dakr.config import ConfigError, ExperimentConfig, apply_overrides
from dakr.stage_config import CONFIG_RULE, describe_stage, non_default_settings, stage_config
from dakr.store import VersionInfo

SMOKE = {"net.filters": [4, 8, 16], "net.patch_size": [32, 32], "preprocess.target_spacing": None, "train.steps_per_epoch": 6}


def version(config: ExperimentConfig, id_: int = 1) -> VersionInfo:
    return VersionInfo(id_, None, "siteA", "finetune", config.to_dict(), 0, "2026-01-01T00:00:00Z", True)


def test_base_model_starts_from_the_defaults() -> None:
    assert stage_config(None, {"train.epochs": 2}) == apply_overrides(ExperimentConfig(), {"train.epochs": 2})


def test_schedule_and_strategy_weights_are_not_carried_over() -> None:
    parent = version(apply_overrides(ExperimentConfig(), {**SMOKE, "continual.lambda_cna": 3.0}))
    child = stage_config(parent, {})
    defaults = ExperimentConfig()
    assert child.train == defaults.train and child.continual == defaults.continual
    assert child.net.filters == (4, 8, 16) and child.preprocess.target_spacing is None


def test_settings_of_this_run_apply() -> None:
    child = stage_config(version(apply_overrides(ExperimentConfig(), SMOKE)), {"train.epochs": 1, "net.filters": [4, 8, 16]})
    assert child.train.epochs == 1 and child.net.filters == (4, 8, 16)


def test_inherited_settings_cannot_change() -> None:
    with pytest.raises(ConfigError, match="net.filters cannot change after the base model.*version 1"):
        stage_config(version(apply_overrides(ExperimentConfig(), SMOKE)), {"net.filters": [8, 16, 32]})


def test_description_names_the_origin_the_rule_and_the_changed_settings() -> None:
    base = stage_config(None, {"train.epochs": 1})
    lines = describe_stage(None, base)
    assert lines[0] == "training from: base model (no parent)"
    assert lines[1] == CONFIG_RULE
    assert lines[2] == "settings that differ from the defaults: train.epochs=1"
    parent = version(base, 3)
    child = describe_stage(parent, stage_config(parent, {}))
    assert child[0] == "training from: parent version 3 (finetune on siteA)"
    assert child[2] == "settings that differ from the defaults: none (all defaults)"
    assert non_default_settings(apply_overrides(ExperimentConfig(), {"net.filters": [4, 8, 16]})) == {"net.filters": (4, 8, 16)}


def test_the_rule_is_in_adapt_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    assert " ".join(CONFIG_RULE.split()) in " ".join(capsys.readouterr().out.split())
