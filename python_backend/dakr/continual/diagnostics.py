"""End-of-stage diagnostics of alignment strategies: how much signal each term carries.

Measured once per stage on a held batch (current-site samples and buffer samples drawn with a
RNG of their own, so the training stream is unchanged): alignment of matched versus shuffled
pairs, and each term's gradient norm on the encoder relative to the segmentation loss's.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from dakr.nets.factory import BottleneckTap, unwrap
from dakr.training.strategy import Batch, StageContext
from dakr.training.trainer import segmentation_loss

#: RNG purpose of the held batch (0 and 1 are training batches and buffer selection).
HELD_BATCH_PURPOSE = 2


def held_batch(ctx: StageContext) -> Batch | None:
    """``4 × batch_size`` current-site samples and up to ``4 × buffer_batch_size`` distinct buffer samples.

    ``None`` when there is no buffer or no sampler.
    """
    if ctx.sampler is None or ctx.buffer is None or len(ctx.buffer) == 0:
        return None
    config = ctx.config
    rng = np.random.default_rng([config.train.seed, ctx.stage, HELD_BATCH_PURPOSE])
    images, labels = ctx.sampler.sample(4 * config.train.batch_size, rng)
    count = min(len(ctx.buffer), 4 * max(config.continual.buffer_batch_size, 1))
    index = np.sort(rng.choice(len(ctx.buffer), size=count, replace=False))
    return Batch(
        torch.cat([torch.from_numpy(images), torch.from_numpy(ctx.buffer.images[index])]),
        torch.cat([torch.from_numpy(labels).long(), torch.from_numpy(ctx.buffer.labels[index].astype(np.int64))]),
        torch.cat([torch.zeros(len(images), dtype=torch.bool), torch.ones(count, dtype=torch.bool)]),
        torch.from_numpy(index),
    ).to(ctx.device)


def forward_with_segmentation_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bottleneck features, logits and L_seg of ``batch`` (full precision, the bare network outside any DDP wrapper)."""
    net = unwrap(model)
    tap = BottleneckTap(net)
    try:
        logits = net(batch.images)
    finally:
        tap.remove()
    seg = segmentation_loss(logits, batch.labels, DiceCELoss(to_onehot_y=True, softmax=True), batch.from_buffer)
    return tap.features, logits, seg


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the encoder path up to and including the bottleneck."""
    net = unwrap(model)
    modules = [net.input_block, *net.downsamples, net.bottleneck]
    return [p for module in modules for p in module.parameters() if p.requires_grad]


def gradient_ratios(seg: torch.Tensor, terms: dict[str, torch.Tensor], parameters: list[nn.Parameter]) -> dict[str, float]:
    """``{name}_grad_ratio``: ‖∇ term‖ / ‖∇ L_seg‖ over ``parameters`` for each weighted term."""
    seg_norm = _gradient_norm(seg, parameters)
    return {f"{name}_grad_ratio": _gradient_norm(term, parameters) / max(seg_norm, 1e-12) for name, term in terms.items()}


def _gradient_norm(loss: torch.Tensor, parameters: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) or torch.zeros(())))
