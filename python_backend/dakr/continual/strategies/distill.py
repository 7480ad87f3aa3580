"""``distill``: replay + plain L2 distillation of bottleneck features against the previous network.

The control for DAKR: the same features and the same previous network as CNA, but a plain
squared error instead of HSIC alignment, so the benchmark shows what the HSIC form adds.
"""

import torch

from dakr.config import ExperimentConfig
from dakr.continual.alignment import cna_vectors, grouped_alignment, within_group_shuffle
from dakr.continual.diagnostics import encoder_parameters, forward_with_segmentation_loss, gradient_ratios, held_batch
from dakr.continual.strategies.replay import Replay
from dakr.nets.factory import encode_to_bottleneck
from dakr.training.strategy import Batch, StageContext


class Distill(Replay):
    """Replay plus ``distill_lambda`` · mean‖z_t(x) − z_{t−1}(x)‖² on the bottleneck maps."""

    name = "distill"
    description = "replay + L2 distillation of bottleneck features (control for DAKR)"
    needs_previous_model = True

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.diagnostics: dict[str, float] = {}

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if ctx.previous_model is None:
            return {}
        return {"distill": self._distill(ctx, batch, features)}

    def _distill(self, ctx: StageContext, batch: Batch, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            previous = encode_to_bottleneck(ctx.previous_model, batch.images)
        return self.config.continual.distill_lambda * (features.float() - previous.float()).pow(2).mean()

    def after_stage(self, ctx: StageContext) -> None:
        """Measure CNA-style nHSIC (matched vs shuffled, bottleneck maps) and the term's relative gradient."""
        batch = held_batch(ctx) if ctx.previous_model is not None else None
        if batch is None:
            self.diagnostics = {}
            return
        continual = self.config.continual
        features, _, seg = forward_with_segmentation_loss(ctx.model, batch)
        with torch.no_grad():
            previous = encode_to_bottleneck(ctx.previous_model, batch.images)
        x, y = cna_vectors(features, previous, continual)
        groups = x.new_zeros(x.shape[0], dtype=torch.long)
        self.diagnostics = {}
        with torch.no_grad():
            matched = grouped_alignment(x, y, groups, continual.kernel, continual.hsic_estimator)
            shuffled = grouped_alignment(x, y[within_group_shuffle(groups)], groups, continual.kernel, continual.hsic_estimator)
        if matched is not None and shuffled is not None:
            self.diagnostics.update(cna_nhsic_matched=float(matched), cna_nhsic_shuffled=float(shuffled))
        self.diagnostics.update(gradient_ratios(seg, {"distill": self._distill(ctx, batch, features)}, encoder_parameters(ctx.model)))

    def stage_diagnostics(self) -> dict[str, float]:
        return dict(self.diagnostics)
