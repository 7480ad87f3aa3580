"""``ewc``: Elastic Weight Consolidation (Kirkpatrick et al., 2017) with a diagonal Fisher.

After each stage the empirical diagonal Fisher of the segmentation loss (the mean of per-sample
squared gradients) is estimated on the stage's training data, normalised to mean 1 and
accumulated with the Fisher inherited from the parent version; the parameters at that point are
the anchor. The penalty is ``ewc_lambda · mean_i F_i (θ_i − θ*_i)²``. Fisher and anchor are
stored with the model version.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.func import functional_call, grad, vmap

from dakr.config import ExperimentConfig
from dakr.continual.strategies.own_data import OwnDataTopUp
from dakr.nets.factory import unwrap
from dakr.training.strategy import Batch, StageContext

#: Batches used to estimate the Fisher information.
FISHER_BATCHES = 8


class EWC(OwnDataTopUp):
    """Quadratic penalty that keeps parameters important for past sites near their old values."""

    name = "ewc"
    description = "elastic weight consolidation (diagonal Fisher)"

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def before_stage(self, ctx: StageContext) -> None:
        self.fisher = {k[len("fisher."):]: v.to(ctx.device) for k, v in ctx.inherited_state.items() if k.startswith("fisher.")}
        self.anchor = {k[len("anchor."):]: v.to(ctx.device) for k, v in ctx.inherited_state.items() if k.startswith("anchor.")}
        if not self.fisher and ctx.previous_model is not None and ctx.buffer is not None and len(ctx.buffer):
            # The parent was trained by another strategy: estimate its Fisher on the buffered past samples.
            self.fisher = _fisher(ctx.previous_model, lambda n: ctx.buffer.sample(n, ctx.rng), ctx)
            self.anchor = {k: p.detach().clone() for k, p in unwrap(ctx.previous_model).named_parameters()}

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.fisher:
            return {}
        penalty = logits.new_zeros((), dtype=torch.float32)
        count = 0
        for name, parameter in unwrap(ctx.model).named_parameters():
            if name in self.fisher:
                penalty = penalty + (self.fisher[name] * (parameter - self.anchor[name]).pow(2)).sum()
                count += parameter.numel()
        return {"ewc": self.config.continual.ewc_lambda * penalty / max(count, 1)}

    def after_stage(self, ctx: StageContext) -> None:
        current = _fisher(ctx.model, lambda n: ctx.sampler.sample(n, ctx.rng), ctx)
        self.fisher = {k: current[k] + self.fisher.get(k, torch.zeros_like(current[k])) for k in current}
        self.anchor = {k: p.detach().clone() for k, p in unwrap(ctx.model).named_parameters()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"fisher.{k}": v.detach().cpu() for k, v in self.fisher.items()},
            **{f"anchor.{k}": v.detach().cpu() for k, v in self.anchor.items()},
        }


def _fisher(
    model: torch.nn.Module, draw: Callable[[int], tuple[np.ndarray, np.ndarray]], ctx: StageContext
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: mean over samples of each sample's squared gradient, normalised to mean 1."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    totals = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    count = 0
    for _ in range(FISHER_BATCHES):
        images, labels = draw(ctx.config.train.batch_size)
        squares = per_sample_squared_gradients(net, torch.from_numpy(images).to(ctx.device), torch.from_numpy(labels).to(ctx.device))
        for k, value in squares.items():
            totals[k] += value
        count += len(images)
    net.train(was_training)
    squares = {k: v / count for k, v in totals.items()}
    mean = torch.stack([v.sum() for v in squares.values()]).sum() / sum(v.numel() for v in squares.values())
    return {k: v / mean.clamp_min(1e-12) for k, v in squares.items()}


def per_sample_squared_gradients(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over the samples of the squared gradient of each sample's own Dice+CE loss (``torch.func``).

    ``functional_call`` runs on a copy: on networks that reach one module under two names it
    would leave the original's aliases pointing at detached tensors.
    """
    net = copy.deepcopy(net)
    # One-hot outside vmap (monai's in-place one-hot cannot be batched); the loss equals Dice+CE on label maps.
    loss_fn = DiceCELoss(softmax=True)
    num_classes = int(net(images[:1]).shape[1])
    targets = torch.movedim(torch.nn.functional.one_hot(labels[:, 0].long(), num_classes), -1, 1).float()
    parameters = {k: p.detach() for k, p in net.named_parameters()}
    buffers = {k: b.detach() for k, b in net.named_buffers()}

    def sample_loss(params: dict[str, torch.Tensor], image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(net, (params, buffers), (image.unsqueeze(0),)), target.unsqueeze(0))

    with torch.enable_grad():
        gradients = vmap(grad(sample_loss), in_dims=(None, 0, 0))(parameters, images, targets)
    return {k: g.pow(2).sum(dim=0) for k, g in gradients.items()}
