"""``dakr``: Dual-Alignment Knowledge Retention (METHOD.md) and its ablations.

Stage t ≥ 2 minimises

    L = L_seg(current) + L_seg(buffer) + λ_cna · (1 − nHSIC(z_t(x), z_{t−1}(x)))
                                       + λ_cra · (1 − nHSIC(U_P, V_P))

* CNA aligns the current network's bottleneck features (taken from the forward pass the
  segmentation loss already does) with the frozen previous network's, which only runs up to its
  bottleneck, on the same inputs (current batch ∪ buffer batch).
* CRA aligns the current network's features of buffered samples with those of current samples,
  after the trainable feature mapping block and the feature pairing block.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dakr.config import ExperimentConfig
from dakr.continual.blocks import FeatureMappingBlock, pair_features, reduce_features
from dakr.continual.hsic import normalized_hsic
from dakr.continual.strategies.replay import Replay
from dakr.nets.factory import encode_to_bottleneck
from dakr.training.strategy import Batch, StageContext


class DAKR(Replay):
    """Replay + cross-network alignment (CNA) + cross-representation alignment (CRA)."""

    name = "dakr"
    description = "DAKR: replay + cross-network and cross-representation HSIC alignment"
    needs_previous_model = True
    use_cna: ClassVar[bool] = True
    use_cra: ClassVar[bool] = True

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        continual = config.continual
        self.buffer_features: torch.Tensor | None = None
        self.mapping: FeatureMappingBlock | None = None
        if self.use_cra and continual.mapping_block:
            self.mapping = FeatureMappingBlock(
                in_channels=config.net.filters[-1],
                hidden=continual.mapping_hidden,
                out_dim=continual.mapping_dim,
                spatial_dims=config.net.spatial_dims,
            )

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"mapping": self.mapping} if self.mapping is not None else {}

    def before_stage(self, ctx: StageContext) -> None:
        """Cache the frozen previous network's bottleneck features of every buffer sample.

        The buffer and the previous network do not change during a stage, and instance
        normalisation makes each sample's features independent of the rest of the batch, so a
        step only has to run the previous encoder on the current-site part of its batch.
        """
        self.buffer_features = None
        if self.use_cna and ctx.previous_model is not None and ctx.buffer is not None and len(ctx.buffer):
            with torch.no_grad():
                self.buffer_features = torch.cat([
                    encode_to_bottleneck(ctx.previous_model, torch.from_numpy(ctx.buffer.images[i : i + 64]).to(ctx.device))
                    for i in range(0, len(ctx.buffer), 64)
                ])

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if ctx.previous_model is None:
            return {}
        terms: dict[str, torch.Tensor] = {}
        if self.use_cna:
            cna = self._cna(ctx, batch, features)
            if cna is not None:
                terms["cna"] = self.config.continual.lambda_cna * cna
        if self.use_cra:
            cra = self._cra(ctx, batch, features)
            if cra is not None:
                terms["cra"] = self.config.continual.lambda_cra * cra
        return terms

    def _previous_features(self, ctx: StageContext, batch: Batch) -> torch.Tensor:
        """The previous network's bottleneck features of the batch (buffer rows from the cache)."""
        with torch.no_grad():
            if self.buffer_features is None or batch.buffer_index is None:
                return encode_to_bottleneck(ctx.previous_model, batch.images)
            current = ~batch.from_buffer
            fresh = encode_to_bottleneck(ctx.previous_model, batch.images[current])
            previous = fresh.new_empty((batch.size, *fresh.shape[1:]))
            previous[current] = fresh
            previous[batch.from_buffer] = self.buffer_features[batch.buffer_index].to(fresh.dtype)
            return previous

    def _cna(self, ctx: StageContext, batch: Batch, features: torch.Tensor) -> torch.Tensor | None:
        continual = self.config.continual
        previous = self._previous_features(ctx, batch)
        current_vectors = reduce_features(features, continual.cna_reduction, continual.cna_pool_size)
        previous_vectors = reduce_features(previous, continual.cna_reduction, continual.cna_pool_size)
        alignment = normalized_hsic(current_vectors, previous_vectors, continual.kernel)
        return None if alignment is None else 1.0 - alignment

    def _cra(self, ctx: StageContext, batch: Batch, features: torch.Tensor) -> torch.Tensor | None:
        buffered = batch.from_buffer
        if not bool(buffered.any()) or bool(buffered.all()):
            return None
        pairs = pair_features(
            features[buffered],
            features[~buffered],
            batch.labels[buffered],
            batch.labels[~buffered],
            self.config.continual.pairing,
            self.mapping,
            ctx.num_classes,
        )
        if pairs is None:
            return None
        alignment = normalized_hsic(pairs[0], pairs[1], self.config.continual.kernel)
        return None if alignment is None else 1.0 - alignment


class DAKRCNAOnly(DAKR):
    """Ablation: replay + CNA, no CRA."""

    name = "dakr-cna"
    description = "DAKR ablation: replay + cross-network alignment only"
    use_cra = False


class DAKRCRAOnly(DAKR):
    """Ablation: replay + CRA, no CNA."""

    name = "dakr-cra"
    description = "DAKR ablation: replay + cross-representation alignment only"
    use_cna = False
