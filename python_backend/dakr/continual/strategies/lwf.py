"""``lwf``: Learning without Forgetting (Li & Hoiem, 2017) for segmentation.

The previous network's softened per-voxel class probabilities on the current batch are the
targets of a distillation term: T² · KL(p_prev^T ‖ p_cur^T), weighted by ``continual.lwf_lambda``.
"""

import torch
import torch.nn.functional as F

from dakr.continual.strategies.own_data import OwnDataTopUp
from dakr.training.strategy import Batch, StageContext


class LwF(OwnDataTopUp):
    """Distil the previous model's soft predictions; no stored data."""

    name = "lwf"
    description = "learning without forgetting (distillation of the previous model's soft predictions)"
    needs_previous_model = True

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if ctx.previous_model is None:
            return {}
        temperature = self.config.continual.lwf_temperature
        with torch.no_grad():
            target = F.softmax(ctx.previous_model(batch.images).float() / temperature, dim=1)
        log_current = F.log_softmax(logits.float() / temperature, dim=1)
        divergence = F.kl_div(log_current, target, reduction="none").sum(dim=1).mean()
        return {"lwf": self.config.continual.lwf_lambda * temperature**2 * divergence}
