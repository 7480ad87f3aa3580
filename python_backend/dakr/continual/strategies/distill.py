"""``distill``: replay + plain L2 distillation of bottleneck features against the previous network.

The control for DAKR: the same features and the same previous network as CNA, but a plain
squared error instead of HSIC alignment, so the benchmark shows what the HSIC form adds.
"""

import torch

from dakr.continual.strategies.replay import Replay
from dakr.nets.factory import encode_to_bottleneck
from dakr.training.strategy import Batch, StageContext


class Distill(Replay):
    """Replay plus ``distill_lambda`` · mean‖z_t(x) − z_{t−1}(x)‖² on the bottleneck maps."""

    name = "distill"
    description = "replay + L2 distillation of bottleneck features (control for DAKR)"
    needs_previous_model = True

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if ctx.previous_model is None:
            return {}
        with torch.no_grad():
            previous = encode_to_bottleneck(ctx.previous_model, batch.images)
        return {"distill": self.config.continual.distill_lambda * (features.float() - previous.float()).pow(2).mean()}
