"""Experiment configuration: preprocessing, network, training and continual-learning settings.

A configuration is a tree of dataclasses that round-trips through plain JSON, is saved next
to every model version (so any checkpoint can be rebuilt) and accepts dotted overrides such
as ``{"train.epochs": 2, "continual.kernel": "linear"}`` from the CLI, the service and the
benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value or override is invalid."""


@dataclass
class PreprocessConfig:
    """How a volume becomes network input; recorded with each model version."""

    #: Target voxel spacing in mm, SimpleITK (x, y, z) order; ``None`` keeps each volume's own.
    target_spacing: tuple[float, float, float] | None = (2.0, 2.0, 2.0)
    #: ``"zscore"`` (per volume, over non-zero voxels) or ``"percentile"`` (clip then rescale to [0, 1]).
    normalization: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    def validate(self) -> None:
        if self.normalization not in ("zscore", "percentile"):
            raise ConfigError(f"preprocess.normalization must be 'zscore' or 'percentile', got {self.normalization!r}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise ConfigError(f"preprocess.target_spacing must be three positive numbers, got {self.target_spacing!r}")


@dataclass
class NetConfig:
    """MONAI DynUNet settings. ``spatial_dims=2`` trains on axial slices, ``3`` on 3D patches."""

    spatial_dims: int = 2
    filters: tuple[int, ...] = (16, 32, 64, 128)
    #: Training patch size (H, W) for 2D or (D, H, W) for 3D, in voxels (array order).
    patch_size: tuple[int, ...] = (96, 96)
    norm: str = "instance"
    dropout: float = 0.0

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"net.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.patch_size) != self.spatial_dims:
            raise ConfigError(
                f"net.patch_size {self.patch_size} must have {self.spatial_dims} values for spatial_dims={self.spatial_dims}"
            )
        factor = 2 ** (len(self.filters) - 1)
        if any(s % factor for s in self.patch_size):
            raise ConfigError(f"net.patch_size {self.patch_size} must be divisible by {factor} for {len(self.filters)} levels")


@dataclass
class TrainConfig:
    """Optimisation settings of one training stage."""

    epochs: int = 4
    steps_per_epoch: int = 50
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    #: ``"adamw"`` or ``"adam"``.
    optimizer: str = "adamw"
    #: ``"cosine"``, ``"poly"`` or ``"constant"``.
    scheduler: str = "cosine"
    #: Probability that a sampled slice/patch is centred on foreground.
    foreground_oversample: float = 0.67
    #: Write a resumable checkpoint every N optimiser steps (0 disables).
    checkpoint_every: int = 50
    seed: int = 0
    #: Mixed precision; only used on CUDA.
    amp: bool = True

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"train.optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "poly", "constant"):
            raise ConfigError(f"train.scheduler must be 'cosine', 'poly' or 'constant', got {self.scheduler!r}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs, train.steps_per_epoch and train.batch_size must be >= 1")
        if not 0.0 <= self.foreground_oversample <= 1.0:
            raise ConfigError("train.foreground_oversample must be within [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"train.lr must be > 0 and train.weight_decay >= 0, got {self.lr} and {self.weight_decay}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class ContinualConfig:
    """Replay buffer, alignment losses and baseline settings (METHOD.md)."""

    #: Buffer budget: at most this many samples (2D slices or 3D patches) ...
    buffer_samples: int = 64
    #: ... and at most this many megabytes of image + label data.
    buffer_megabytes: float = 64.0
    #: ``"random"`` (seeded) or ``"herding"`` (on bottleneck features).
    buffer_selection: str = "random"
    #: Buffer samples drawn per training step, concatenated to the current batch.
    buffer_batch_size: int = 8
    lambda_cna: float = 0.3
    lambda_cra: float = 0.25
    #: Weight of the mean squared error between the current and the frozen previous network's
    #: logits on the buffered samples of each batch (the buffer's loss, an [ours] choice of
    #: METHOD.md, in the manner of dark experience replay, Buzzega et al., 2020); 0 disables.
    #: The previous network's logits are computed once per stage, so the term costs no forward pass;
    #: they take ``num_classes`` times the buffer's image memory.
    lambda_buffer_logits: float = 0.0
    #: HSIC kernel for CNA and CRA: ``"gaussian"`` or ``"linear"``.
    kernel: str = "gaussian"
    #: CNA feature reduction (METHOD.md, "CNA"): ``"pooled"`` (adaptive average pooling to
    #: ``cna_pool_size`` per spatial dimension, then flatten), ``"spatial"`` (``cna_spatial_samples``
    #: per-position vectors drawn at random each step), ``"prenorm"`` (the bottleneck's activations
    #: before its final normalisation + activation, pooled like ``"pooled"``) or ``"gap"``
    #: (global average pooling; near-constant after a non-affine InstanceNorm).
    cna_reduction: str = "pooled"
    #: Where CNA takes its features: ``"bottleneck"`` (METHOD.md) or ``"decoder"`` (the last
    #: decoder level, which also carries what the skip connections pass around the bottleneck;
    #: use it with ``cna_reduction`` ``"spatial"`` or ``"pooled"``).
    cna_layer: str = "bottleneck"
    cna_pool_size: int = 2
    cna_spatial_samples: int = 256
    #: Apply CNA to the buffered samples of each batch only (spares plasticity on the new site).
    cna_buffer_only: bool = False
    #: CRA feature pairing: ``"class_prototype"``, ``"similarity"`` or ``"index"``.
    pairing: str = "class_prototype"
    #: CRA scoring: ``"per_class"`` (nHSIC within each class, averaged over classes with at least
    #: ``cra_min_pairs`` pairs) or ``"stacked"`` (one nHSIC over the pairs of all classes).
    cra_scoring: str = "per_class"
    cra_min_pairs: int = 4
    #: Space in which CRA pairs are chosen (no gradient): ``"previous"`` (the previous network's
    #: bottleneck features), ``"projection"`` (a fixed random projection of the current network's
    #: features) or ``"current"`` (the mapped features being optimised).
    cra_pair_space: str = "previous"
    #: ``"previous"``: the current-data side of CRA uses the previous network's features, so the
    #: previous network anchors it; ``"none"``: both sides come from the current network.
    cra_anchor: str = "none"
    #: Which side of CRA receives its gradient: ``"both"``, ``"buffer"`` (the current-site side is a
    #: fixed target, so CRA moves only the buffered samples' features and leaves the new site's
    #: free to learn) or ``"current"`` (the buffered side is the fixed target).
    cra_gradient: str = "both"
    #: How deep CRA's gradient reaches into the encoder: ``"encoder"`` (every encoder block) or
    #: ``"bottleneck"`` (only the bottleneck block: CRA sees the bottleneck recomputed from its
    #: detached input, so the earlier blocks stay free to adapt to the new site's contrast).
    cra_reach: str = "encoder"
    #: Cap CRA's gradient on the bottleneck features at this multiple of the other terms' (the
    #: segmentation losses' and CNA's), measured on the previous step; 0 disables the cap.
    cra_balance: float = 0.0
    #: Use the trainable feature mapping block in CRA (else GAP of raw features).
    mapping_block: bool = True
    mapping_hidden: int = 128
    mapping_dim: int = 64
    #: HSIC estimator of the alignment losses: ``"unbiased"`` (Song et al., 2012) or ``"biased"``.
    hsic_estimator: str = "unbiased"
    #: Past pairs (without gradient) kept per alignment term and class and added to each HSIC
    #: batch, so the kernels see more samples; 0 disables the queue.
    hsic_queue: int = 0
    #: Steps of a stage before CNA and CRA switch on, then steps over which their weight ramps
    #: linearly from 0 to 1 (0: full weight at once).
    align_warmup_steps: int = 0
    align_ramp_steps: int = 0
    ewc_lambda: float = 1000.0
    lwf_lambda: float = 1.0
    lwf_temperature: float = 2.0
    distill_lambda: float = 1.0

    def validate(self) -> None:
        choices = {
            "buffer_selection": ("random", "herding"),
            "kernel": ("gaussian", "linear"),
            "cna_reduction": ("pooled", "spatial", "prenorm", "gap"),
            "cna_layer": ("bottleneck", "decoder"),
            "pairing": ("class_prototype", "similarity", "index"),
            "cra_scoring": ("per_class", "stacked"),
            "cra_pair_space": ("previous", "projection", "current"),
            "cra_anchor": ("none", "previous"),
            "cra_gradient": ("both", "buffer", "current"),
            "cra_reach": ("encoder", "bottleneck"),
            "hsic_estimator": ("unbiased", "biased"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"continual.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.buffer_samples < 0 or self.buffer_megabytes < 0:
            raise ConfigError("continual.buffer_samples and continual.buffer_megabytes must be >= 0")
        minimums = {"lambda_cna": 0, "lambda_cra": 0, "lambda_buffer_logits": 0, "ewc_lambda": 0, "lwf_lambda": 0,
                    "distill_lambda": 0, "cna_pool_size": 1, "cna_spatial_samples": 4, "cra_min_pairs": 4, "hsic_queue": 0,
                    "align_warmup_steps": 0, "align_ramp_steps": 0, "cra_balance": 0}
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ConfigError(f"continual.{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.lwf_temperature <= 0:
            raise ConfigError(f"continual.lwf_temperature must be > 0, got {self.lwf_temperature}")
        if self.cna_layer == "decoder" and self.cna_reduction == "prenorm":
            raise ConfigError("continual.cna_reduction 'prenorm' names the bottleneck's activations, not the decoder's. "
                              "Fix: set continual.cna_reduction to 'spatial' or 'pooled', or continual.cna_layer to 'bottleneck'")
        if self.cra_balance > 0 and self.cra_reach != "encoder":
            raise ConfigError("continual.cra_balance measures CRA's gradient on the bottleneck features, which "
                              "cra_reach='bottleneck' bypasses. Fix: set continual.cra_balance to 0 or cra_reach to 'encoder'")


@dataclass
class ExperimentConfig:
    """Everything needed to train, resume and rebuild a model version."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)

    def validate(self) -> "ExperimentConfig":
        for section in (self.preprocess, self.net, self.train, self.continual):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """Build a config from a (possibly partial) nested dict; unknown keys are errors."""
        return apply_overrides(cls(), flatten(data))

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        """Read a JSON config file (partial files are merged over the defaults)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}. Fix: pass a JSON file such as the ones in dakr/configs/") from exc
        return cls.from_dict(data)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` → ``{"train.epochs": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert JSON/CLI values to the type of the current field value."""
    if isinstance(value, str) and not isinstance(current, str) and current is not None:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: cannot parse {value!r}") from exc
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(current, tuple) or (current is None and isinstance(value, list)):
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(value)
    return value


def apply_overrides(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Return a validated copy of ``config`` with dotted-key overrides applied."""
    data = config.to_dict()
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in data or key not in data[section]:
            known = ", ".join(f"{s}.{k}" for s in data for k in data[s])
            raise ConfigError(f"unknown config key {dotted!r}. Known keys: {known}")
        data[section][key] = _coerce(value, data[section][key], dotted)
    result = ExperimentConfig(
        preprocess=PreprocessConfig(**_tuples(data["preprocess"])),
        net=NetConfig(**_tuples(data["net"])),
        train=TrainConfig(**data["train"]),
        continual=ContinualConfig(**data["continual"]),
    )
    return result.validate()


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``key=value`` CLI override; the value is JSON when it parses as JSON."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=2")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
