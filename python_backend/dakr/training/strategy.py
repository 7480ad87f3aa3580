"""The strategy interface: how a continual-learning method plugs into the trainer.

A strategy is a small class with lifecycle hooks, in the spirit of Avalanche plugins: the
:class:`~dakr.training.trainer.Trainer` owns the loop and calls the hooks at fixed points; it
never special-cases a strategy. Adding a method means adding one file under
``dakr/continual/strategies`` and registering its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from dakr.config import ExperimentConfig

if TYPE_CHECKING:
    from dakr.continual.buffer import ReplayBuffer
    from dakr.data.sampling import PatchSampler


@dataclass
class Batch:
    """A training batch. ``from_buffer[i]`` tells whether sample ``i`` came from the replay buffer;
    ``buffer_index`` holds the buffer positions of those samples, in batch order."""

    images: torch.Tensor
    labels: torch.Tensor
    from_buffer: torch.Tensor
    buffer_index: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.images.to(device),
            self.labels.to(device),
            self.from_buffer.to(device),
            None if self.buffer_index is None else self.buffer_index.to(device),
        )


@dataclass
class StageContext:
    """Everything a strategy may look at during one training stage.

    ``stage`` is 1 for the base model; ``previous_model`` (frozen, eval mode) and ``buffer``
    exist from stage 2 on.
    """

    config: ExperimentConfig
    model: nn.Module
    sampler: "PatchSampler"
    num_classes: int
    device: torch.device
    rng: np.random.Generator
    stage: int
    site: str
    previous_model: nn.Module | None = None
    buffer: "ReplayBuffer | None" = None
    #: Tensors the parent version stored for strategies (keys without the ``strategy.`` prefix).
    inherited_state: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Optimiser steps already taken in this stage (set by the trainer before each step).
    step: int = 0


class Strategy:
    """Base class: plain supervised training (every hook is a no-op)."""

    #: Name used on the command line, in the store and in reports.
    name: ClassVar[str] = "base"
    #: One line for ``--help`` and the Slicer module.
    description: ClassVar[str] = "plain supervised training"
    #: Whether the strategy needs the frozen previous network.
    needs_previous_model: ClassVar[bool] = False

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    def training_sites(self, site: str, past_sites: list[str]) -> list[str]:
        """Sites whose training cases form this stage's training data (default: the new site only)."""
        return [site]

    def before_stage(self, ctx: StageContext) -> None:
        """Called once before the first step of a stage."""

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Extra modules trained jointly with the network and saved with it (e.g. a mapping block)."""
        return {}

    def adapt_batch(self, ctx: StageContext, batch: Batch) -> Batch:
        """Change the batch before the forward pass (replay appends buffer samples)."""
        return batch

    def extra_losses(
        self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms added to the segmentation loss; ``features`` is the current bottleneck."""
        return {}

    def after_stage(self, ctx: StageContext) -> None:
        """Called once after the last step of a stage (e.g. to estimate a Fisher matrix)."""

    def stage_diagnostics(self) -> dict[str, float]:
        """Named measurements of the stage that just ended (empty for strategies without any)."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store with the new model version (trainable modules and strategy state)."""
        return {
            f"{module_name}.{key}": value.detach().cpu()
            for module_name, module in self.trainable_modules().items()
            for key, value in module.state_dict().items()
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore trainable modules from tensors saved by :meth:`state_tensors` (missing ones keep their init)."""
        for module_name, module in self.trainable_modules().items():
            prefix = f"{module_name}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if own:
                module.load_state_dict(own)
