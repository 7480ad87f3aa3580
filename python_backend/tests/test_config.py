"""Configs round-trip through JSON and reject bad overrides with a clear message."""

import json

import pytest

from dakr.config import ConfigError, ExperimentConfig, apply_overrides, parse_override


def test_round_trip_and_overrides(tmp_path):
    config = apply_overrides(ExperimentConfig(), {"train.epochs": 2, "continual.kernel": "linear", "net.patch_size": [64, 64]})
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    loaded = ExperimentConfig.load(path)
    assert loaded == config
    assert loaded.net.patch_size == (64, 64)
    assert loaded.train.total_steps == 2 * config.train.steps_per_epoch


def test_partial_file_merges_over_defaults(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"train": {"lr": 0.01}}))
    assert ExperimentConfig.load(path).train.lr == 0.01
    assert ExperimentConfig.load(path).train.epochs == ExperimentConfig().train.epochs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epoch": 2}, "unknown config key 'train.epoch'"),
        ({"train.epochs": "many"}, "train.epochs: cannot parse"),
        ({"train.epochs": 1.5}, "must be an integer"),
        ({"continual.pairing": "random"}, "continual.pairing must be one of"),
        ({"net.spatial_dims": 4}, "net.spatial_dims must be 2 or 3"),
        ({"train.epochs": "Infinity"}, "train.epochs must be a finite number"),
        ({"train.lr": float("nan")}, "train.lr must be a finite number"),
        ({"preprocess.target_spacing": [1.0, float("inf"), 1.0]}, "preprocess.target_spacing must be a finite number"),
        ({"train.lr": 0.0}, "train.lr must be > 0"),
        ({"continual.lambda_cra": -1.0}, "continual.lambda_cra must be >= 0"),
        ({"continual.lwf_temperature": 0.0}, "continual.lwf_temperature must be > 0"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExperimentConfig(), overrides)


def test_parse_override():
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("continual.kernel=linear") == ("continual.kernel", "linear")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs")
