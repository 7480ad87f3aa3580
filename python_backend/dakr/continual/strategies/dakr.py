"""``dakr``: Dual-Alignment Knowledge Retention (METHOD.md) and its ablations.

Stage t ≥ 2 minimises

    L = L_seg(current) + L_seg(buffer) + λ_cna · (1 − nHSIC(z_t(x), z_{t−1}(x)))
                                       + λ_cra · (1 − nHSIC(U_P, V_P))

* CNA aligns the current network's bottleneck features (taken from the forward pass the
  segmentation loss already does) with the frozen previous network's, which only runs up to its
  bottleneck, on the same inputs (current batch ∪ buffer batch).
* CRA aligns the current network's features of buffered samples with those of current samples
  (or, with ``cra_anchor="previous"``, with the previous network's features of the current
  samples), after the trainable feature mapping block and the feature pairing block; pairs are
  chosen outside the optimised space and scored within each class, so separating classes alone
  cannot satisfy it. ``cra_gradient`` chooses which side the term moves, ``cra_reach`` how deep
  into the encoder, and ``cra_balance`` caps its pull relative to the other terms'.
* Both terms can use the unbiased HSIC estimator and a short queue of past pairs, and switch on
  after a warm-up. :meth:`DAKR.stage_diagnostics` reports how much signal they carried.
* With ``lambda_buffer_logits`` > 0 the buffer's loss also keeps the current network's logits on
  buffered samples close (squared error) to the previous network's, computed once per stage.
  A term whose weight is 0 is not computed, so ``dakr`` with ``lambda_cna`` and ``lambda_cra`` 0
  is replay plus that term alone: the control that shows what the HSIC terms add to it.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from dakr.config import ExperimentConfig
from dakr.continual.alignment import PairQueue, cna_vectors, grouped_alignment, within_group_shuffle
from dakr.continual.balance import GradientBalance
from dakr.continual.blocks import FeatureMappingBlock, FeaturePairs, pair_features
from dakr.continual.diagnostics import encoder_parameters, forward_with_segmentation_loss, gradient_ratios, held_batch
from dakr.continual.strategies.replay import Replay
from dakr.nets.factory import BottleneckTap, DecoderTap, FeatureTap, encode_to_bottleneck, unwrap
from dakr.training.strategy import Batch, StageContext

#: Buffer samples per pass of the previous encoder when caching their features.
CACHE_CHUNK = 64


#: The previous network's output, as a kind of map next to the tapped activations.
LOGITS = "logits"


def tap_for(model: nn.Module, kind: str) -> FeatureTap:
    """A hook that keeps ``model``'s maps of ``kind`` ("bottleneck", "prenorm" or "decoder") in its ``features``."""
    return DecoderTap(model) if kind == "decoder" else BottleneckTap(model, prenorm=kind == "prenorm")


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
        #: The previous network's maps of every buffer sample, by kind ("bottleneck", "prenorm").
        self.buffer_features: dict[str, torch.Tensor] = {}
        self.mapping: FeatureMappingBlock | None = None
        if self.use_cra and continual.mapping_block:
            self.mapping = FeatureMappingBlock(
                in_channels=config.net.filters[-1],
                hidden=continual.mapping_hidden,
                out_dim=continual.mapping_dim,
                spatial_dims=config.net.spatial_dims,
            )
        self.cna_queue = PairQueue(continual.hsic_queue)
        self.cra_queue = PairQueue(continual.hsic_queue)
        self.cra_balance = GradientBalance(continual.cra_balance)
        self.diagnostics: dict[str, float] = {}
        #: Hook on the current network for CNA's maps when they are not the bottleneck's output.
        self._cna_tap: FeatureTap | None = None
        self._bottleneck_tap: BottleneckTap | None = None
        self._projection: torch.Tensor | None = None

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"mapping": self.mapping} if self.mapping is not None else {}

    def stage_diagnostics(self) -> dict[str, float]:
        return dict(self.diagnostics)

    # -- what the previous network must provide ---------------------------------------------------
    @property
    def _cna_on(self) -> bool:
        """CNA is part of this strategy and has a weight: a term with weight 0 is not computed."""
        return self.use_cna and self.config.continual.lambda_cna > 0

    @property
    def _cra_on(self) -> bool:
        """CRA is part of this strategy and has a weight."""
        return self.use_cra and self.config.continual.lambda_cra > 0

    @property
    def _cna_kind(self) -> str:
        continual = self.config.continual
        if continual.cna_layer == "decoder":
            return "decoder"
        return "prenorm" if continual.cna_reduction == "prenorm" else "bottleneck"

    def _cra_kinds(self) -> set[str]:
        """The previous network's maps CRA reads: its bottleneck, for pairing or as the anchor."""
        continual = self.config.continual
        reads = self._cra_on and (continual.cra_pair_space == "previous" or continual.cra_anchor == "previous")
        return {"bottleneck"} if reads else set()

    def _previous_kinds(self) -> set[str]:
        """The previous network's maps the terms read on any row (its logits only on buffered rows)."""
        logits = {LOGITS} if self.config.continual.lambda_buffer_logits > 0 else set()
        return ({self._cna_kind} if self._cna_on else set()) | self._cra_kinds() | logits

    def _current_row_kinds(self) -> set[str]:
        """The previous network's maps the terms read on current-site rows (buffer-only CNA reads none)."""
        cna_on_current = self._cna_on and not self.config.continual.cna_buffer_only
        return ({self._cna_kind} if cna_on_current else set()) | self._cra_kinds()

    def _encode_previous(self, model: nn.Module, images: torch.Tensor, kinds: set[str]) -> dict[str, torch.Tensor]:
        """The previous network's maps of ``images`` of each of ``kinds``.

        Only the decoder kind and the logits need a full forward pass; the others stop at the bottleneck.
        """
        taps = {kind: tap_for(model, kind) for kind in kinds - {LOGITS}}
        try:
            with torch.no_grad():
                if kinds & {"decoder", LOGITS}:
                    output = model(images)
                else:
                    encode_to_bottleneck(model, images)
        finally:
            for tap in taps.values():
                tap.remove()
        maps = {kind: tap.features for kind, tap in taps.items()}
        if LOGITS in kinds:
            maps[LOGITS] = output
        return maps

    # -- stage hooks --------------------------------------------------------------------------------
    def before_stage(self, ctx: StageContext) -> None:
        """Cache the frozen previous network's features of every buffer sample; reset queues and hooks.

        The buffer and the previous network do not change during a stage, and instance
        normalisation makes each sample's features independent of the rest of the batch, so a
        step only has to run the previous encoder on the current-site part of its batch. With
        ``cna_layer="decoder"`` the cache holds full-resolution maps: ``filters[0]`` times the
        buffer's image memory.
        """
        self.buffer_features = {}
        self.diagnostics = {}
        self.cna_queue.clear()
        self.cra_queue.clear()
        self.cra_balance.reset()
        self._register_taps(ctx.model)
        kinds = self._previous_kinds()
        if ctx.previous_model is not None and ctx.buffer is not None and len(ctx.buffer) and kinds:
            chunks = [
                self._encode_previous(ctx.previous_model, torch.from_numpy(ctx.buffer.images[i : i + CACHE_CHUNK]).to(ctx.device), kinds)
                for i in range(0, len(ctx.buffer), CACHE_CHUNK)
            ]
            self.buffer_features = {kind: torch.cat([chunk[kind] for chunk in chunks]) for kind in chunks[0]}

    def after_stage(self, ctx: StageContext) -> None:
        """Measure the stage's diagnostics on a held batch, then remove the activation hooks.

        The hooks are registered afresh, so a network trained by another strategy can be measured too.
        """
        self._register_taps(ctx.model)
        try:
            batch = held_batch(ctx) if ctx.previous_model is not None else None
            if batch is not None:
                self.diagnostics = self._measure(ctx, batch)
        finally:
            self._remove_taps()

    def _register_taps(self, model: nn.Module) -> None:
        """Hook the activations this configuration reads from ``model`` (replacing earlier hooks)."""
        self._remove_taps()
        if self._cna_on and self._cna_kind != "bottleneck":
            self._cna_tap = tap_for(model, self._cna_kind)
        if self._cra_on and self.config.continual.cra_reach == "bottleneck":
            self._bottleneck_tap = BottleneckTap(model)

    def _remove_taps(self) -> None:
        for tap in (self._cna_tap, self._bottleneck_tap):
            if tap is not None:
                tap.remove()
        self._cna_tap = self._bottleneck_tap = None

    def _cra_features(self, ctx: StageContext, features: torch.Tensor) -> torch.Tensor:
        """The bottleneck features CRA moves: ``features`` itself, or with ``cra_reach="bottleneck"``
        the bottleneck block recomputed from its detached input, so CRA's gradient stops there."""
        if self._bottleneck_tap is None:
            return features
        cna_maps = self._cna_tap.features if self._cna_tap is not None else None
        recomputed = unwrap(ctx.model).bottleneck.forward(self._bottleneck_tap.inputs.detach())
        if self._cna_tap is not None:
            self._cna_tap.features = cna_maps
        return recomputed

    # -- losses -----------------------------------------------------------------------------------
    def alignment_weight(self, step: int) -> float:
        """Factor on both terms at ``step``: 0 during the warm-up, then a linear ramp to 1."""
        continual = self.config.continual
        if step < continual.align_warmup_steps:
            return 0.0
        if continual.align_ramp_steps == 0:
            return 1.0
        return min(1.0, (step - continual.align_warmup_steps + 1) / continual.align_ramp_steps)

    def extra_losses(self, ctx: StageContext, batch: Batch, logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.alignment_weight(ctx.step)
        if ctx.previous_model is None or weight == 0.0:
            return {}
        continual = self.config.continual
        previous = self._previous_maps(ctx, batch)
        terms: dict[str, torch.Tensor] = {}
        drift = self._logit_drift(batch, logits, previous)
        if drift is not None:
            terms["logits"] = weight * continual.lambda_buffer_logits * drift
        if self._cna_on:
            x, y = self._cna_pairs(batch, features, previous)
            cna = grouped_alignment(*self.cna_queue.join(x, y, x.new_zeros(x.shape[0], dtype=torch.long)),
                                    continual.kernel, continual.hsic_estimator)
            if cna is not None:
                terms["cna"] = weight * continual.lambda_cna * (1.0 - cna)
        if self._cra_on:
            pairs = self._cra_pairs(ctx, batch, self.cra_balance.branch(features), previous)
            if pairs is not None:
                cra = self._cra_score(*self.cra_queue.join(*pairs))
                if cra is not None:
                    terms["cra"] = weight * continual.lambda_cra * self.cra_balance.factor * (1.0 - cra)
        return terms

    def _previous_maps(self, ctx: StageContext, batch: Batch) -> dict[str, torch.Tensor]:
        """The previous network's maps of the batch (buffer rows from the cache).

        Rows of current-site samples are zero when no term needs them (buffer-only CNA).
        """
        if not self._previous_kinds():
            return {}
        cached = bool(self.buffer_features) and batch.buffer_index is not None
        if not cached:
            return self._encode_previous(ctx.previous_model, batch.images, self._previous_kinds())
        current = ~batch.from_buffer
        kinds = self._current_row_kinds()
        fresh = self._encode_previous(ctx.previous_model, batch.images[current], kinds) if kinds else {}
        maps = {}
        for kind, buffer_maps in self.buffer_features.items():
            full = buffer_maps.new_zeros((batch.size, *buffer_maps.shape[1:]))
            full[batch.from_buffer] = buffer_maps[batch.buffer_index]
            if kind in fresh:
                full[current] = fresh[kind].to(full.dtype)
            maps[kind] = full
        return maps

    @staticmethod
    def _logit_drift(batch: Batch, logits: torch.Tensor, previous: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Mean squared difference of the current and previous logits on the buffered rows (``None``: not asked for, or no such rows)."""
        if LOGITS not in previous or not bool(batch.from_buffer.any()):
            return None
        target = previous[LOGITS][batch.from_buffer].float()
        return (logits[batch.from_buffer].float() - target).pow(2).mean()

    def _cna_pairs(self, batch: Batch, features: torch.Tensor, previous: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Paired CNA rows: current vs previous network on the same inputs."""
        continual = self.config.continual
        current_maps = features if self._cna_tap is None else self._cna_tap.features
        previous_maps = previous[self._cna_kind]
        if continual.cna_buffer_only:
            current_maps, previous_maps = current_maps[batch.from_buffer], previous_maps[batch.from_buffer]
        return cna_vectors(current_maps, previous_maps.to(current_maps.dtype), continual)

    def _cra_pairs(
        self, ctx: StageContext, batch: Batch, features: torch.Tensor, previous: dict[str, torch.Tensor]
    ) -> FeaturePairs | None:
        """Paired CRA embeddings of buffer (current network) and current-site samples."""
        continual = self.config.continual
        buffered = batch.from_buffer
        if not bool(buffered.any()) or bool(buffered.all()):
            return None
        features = self._cra_features(ctx, features)
        buffer_side, current_side = features[buffered], features[~buffered]
        if continual.cra_gradient == "buffer":
            current_side = current_side.detach()
        elif continual.cra_gradient == "current":
            buffer_side = buffer_side.detach()
        if continual.cra_anchor == "previous":
            current_side = previous["bottleneck"][~buffered].to(features.dtype)
        keys = None
        if continual.cra_pair_space == "previous":
            keys = (previous["bottleneck"][buffered], previous["bottleneck"][~buffered])
        elif continual.cra_pair_space == "projection":
            keys = (self._project(features[buffered].detach()), self._project(features[~buffered].detach()))
        return pair_features(
            buffer_side, current_side, batch.labels[buffered], batch.labels[~buffered],
            continual.pairing, self.mapping, ctx.num_classes, keys,
        )

    def _cra_score(self, u: torch.Tensor, v: torch.Tensor, groups: torch.Tensor) -> torch.Tensor | None:
        continual = self.config.continual
        if continual.cra_scoring == "stacked":
            return grouped_alignment(u, v, torch.zeros_like(groups), continual.kernel, continual.hsic_estimator)
        return grouped_alignment(u, v, groups, continual.kernel, continual.hsic_estimator, continual.cra_min_pairs)

    def _project(self, maps: torch.Tensor) -> torch.Tensor:
        """A fixed random channel projection (seeded by ``train.seed``) of maps ``(B, C, *S)``."""
        channels = maps.shape[1]
        if self._projection is None or self._projection.shape[0] != channels:
            generator = torch.Generator().manual_seed(self.config.train.seed)
            self._projection = torch.randn(channels, channels, generator=generator) / channels**0.5
        return torch.einsum("bc...,dc->bd...", maps.float(), self._projection.to(maps.device))

    # -- diagnostics --------------------------------------------------------------------------------
    def _measure(self, ctx: StageContext, batch: Batch) -> dict[str, float]:
        """Matched vs shuffled nHSIC of CNA and CRA, the buffered logits' drift, and each term's encoder gradient relative to L_seg's."""
        continual = self.config.continual
        mapping_state = copy.deepcopy(self.mapping.state_dict()) if self.mapping is not None else None
        try:
            features, logits, seg = forward_with_segmentation_loss(ctx.model, batch)
            previous = self._previous_maps(ctx, batch)
            terms: dict[str, torch.Tensor] = {}
            measured: dict[str, float] = {}
            drift = self._logit_drift(batch, logits, previous)
            if drift is not None:
                measured["logits_drift"] = drift.item()
                terms["logits"] = continual.lambda_buffer_logits * drift
            if self._cna_on:
                x, y = self._cna_pairs(batch, features, previous)
                groups = x.new_zeros(x.shape[0], dtype=torch.long)
                matched = grouped_alignment(x, y, groups, continual.kernel, continual.hsic_estimator)
                shuffled = grouped_alignment(x, y[within_group_shuffle(groups)], groups, continual.kernel, continual.hsic_estimator)
                if matched is not None and shuffled is not None:
                    measured.update(cna_nhsic_matched=matched.item(), cna_nhsic_shuffled=shuffled.item())
                    terms["cna"] = continual.lambda_cna * (1.0 - matched)
            if self._cra_on:
                pairs = self._cra_pairs(ctx, batch, features, previous)
                if pairs is not None:
                    matched = self._cra_score(*pairs)
                    shuffled = self._cra_score(pairs.u, pairs.v[within_group_shuffle(pairs.groups)], pairs.groups)
                    if matched is not None and shuffled is not None:
                        measured.update(cra_nhsic_matched=matched.item(), cra_nhsic_within_class_shuffled=shuffled.item())
                        terms["cra"] = continual.lambda_cra * (1.0 - matched)
            measured.update(gradient_ratios(seg, terms, encoder_parameters(ctx.model)))
            return measured
        finally:
            if mapping_state is not None:
                self.mapping.load_state_dict(mapping_state)


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
