"""Feature mapping and feature pairing blocks of cross-representation alignment (METHOD.md, "CRA").

Feature maps are bottleneck activations of shape ``(B, C, *S)`` with ``S`` two (2D) or three (3D)
spatial sizes. Label maps are integer class indices in ``[0, num_classes)`` of shape
``(B, 1, *S_full)`` or ``(B, *S_full)`` at any resolution; class 0 is background.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dakr.continual.hsic import MIN_SAMPLES

PAIRING_METHODS = ("class_prototype", "similarity", "index")
REDUCTIONS = ("pooled", "spatial", "prenorm", "gap")


class _SingleValueSafeBatchNorm:
    """BatchNorm mixin: in training, a call with one value per channel uses the running statistics.

    Batch statistics of a single value are undefined (zero variance), and PyTorch raises on them.
    Such a call (e.g. one prototype in the head) is normalised like in eval mode with the running
    mean and variance, and leaves them unchanged; every other call is an ordinary BatchNorm call.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class SafeBatchNorm1d(_SingleValueSafeBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` that accepts a batch of one in training (running statistics)."""


class SafeBatchNorm2d(_SingleValueSafeBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` that accepts one value per channel in training (running statistics)."""


class SafeBatchNorm3d(_SingleValueSafeBatchNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` that accepts one value per channel in training (running statistics)."""


class FeatureMappingBlock(nn.Module):
    """Trainable head g_ψ shared by the buffer and current branches of CRA.

    ``1x1 conv (C→hidden) → BN → ReLU`` (:meth:`project`), then global average pooling, then
    ``Linear(hidden→hidden) → BN → ReLU → Linear(hidden→out_dim)`` (:meth:`head`).
    """

    def __init__(self, in_channels: int, hidden: int = 128, out_dim: int = 64, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"FeatureMappingBlock needs spatial_dims 2 or 3, got {spatial_dims} (config key net.spatial_dims)")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = SafeBatchNorm2d if spatial_dims == 2 else SafeBatchNorm3d
        self.spatial_dims = spatial_dims
        self.projection = nn.Sequential(conv(in_channels, hidden, kernel_size=1), norm(hidden), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), SafeBatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def project(self, feature_map: Tensor) -> Tensor:
        """Map ``(B, C, *S)`` to ``(B, hidden, *S)`` (the convolutional stage, used by class prototypes)."""
        return self.projection(feature_map)

    def head(self, vectors: Tensor) -> Tensor:
        """Map pooled vectors ``(N, hidden)`` to embeddings ``(N, out_dim)``."""
        return self.mlp(vectors)

    def forward(self, feature_map: Tensor) -> Tensor:
        """Embed ``(B, C, *S)`` as ``(B, out_dim)`` = head(GAP(project(feature_map)))."""
        return self.head(global_average_pool(self.project(feature_map)))


def global_average_pool(feature_map: Tensor) -> Tensor:
    """Mean over the spatial dimensions: ``(B, C, *S)`` → ``(B, C)``."""
    return feature_map.flatten(2).mean(dim=2)


def reduce_features(feature_map: Tensor, reduction: str = "pooled", pool_size: int = 2) -> Tensor:
    """Reduce each sample's feature map to one vector (CNA).

    ``(B, C, *S)`` → ``(B, C)`` for ``"gap"``, or ``(B, C·pool_size^d)`` for ``"pooled"`` and
    ``"prenorm"`` (adaptive average pooling to ``pool_size`` per spatial dimension, then flatten;
    ``"prenorm"`` differs only in which activations the caller passes). ``"spatial"`` pairs
    positions rather than samples: use :func:`sample_positions`.
    """
    if reduction == "gap":
        return global_average_pool(feature_map)
    if reduction in ("pooled", "prenorm"):
        pool = F.adaptive_avg_pool2d if feature_map.ndim == 4 else F.adaptive_avg_pool3d
        return pool(feature_map, pool_size).flatten(1)
    if reduction == "spatial":
        raise ValueError("the 'spatial' reduction pairs positions of two feature maps; call sample_positions")
    raise ValueError(f"unknown feature reduction {reduction!r}; use one of {REDUCTIONS} (config key continual.cna_reduction)")


def sample_positions(first: Tensor, second: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Per-position feature vectors of two aligned maps ``(B, C, *S)``, the same ``count`` positions of both.

    Every (sample, position) of the batch is a candidate; ``count`` of them are drawn at random
    without replacement (all when there are fewer). Returns ``(n, C)`` and ``(n, C')``, row i of
    both taken at the same sample and position.
    """
    if first.shape[0] != second.shape[0] or first.shape[2:] != second.shape[2:]:
        raise ValueError(f"feature maps must share batch and spatial sizes, got {tuple(first.shape)} and {tuple(second.shape)}")
    rows_first = first.movedim(1, -1).reshape(-1, first.shape[1])
    rows_second = second.movedim(1, -1).reshape(-1, second.shape[1])
    chosen = torch.randperm(rows_first.shape[0], device=first.device)[:count]
    return rows_first[chosen], rows_second[chosen]


def class_fractions(labels: Tensor, spatial_size: tuple[int, ...], num_classes: int) -> Tensor:
    """Area-based downsampling of a label map to the bottleneck grid.

    ``labels`` ``(B, 1, *S_full)`` or ``(B, *S_full)`` → ``(B, num_classes - 1, *spatial_size)``:
    for each foreground class, the fraction of each bottleneck cell's voxels carrying that class.
    """
    if labels.ndim == len(spatial_size) + 2:
        labels = labels.squeeze(1)
    labels = labels.long()
    if (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]; "
            "pass num_classes = number of label values including background"
        )
    one_hot = F.one_hot(labels, num_classes).movedim(-1, 1)[:, 1:].float()
    pool = F.adaptive_avg_pool2d if len(spatial_size) == 2 else F.adaptive_avg_pool3d
    return pool(one_hot, spatial_size)


def class_prototypes(feature_map: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per image and foreground class, the label-weighted mean feature vector.

    ``feature_map`` ``(B, D, *S)``, ``labels`` as in :func:`class_fractions`. Returns
    ``prototypes`` ``(B, num_classes - 1, D)`` (weights: area fractions of the class per cell) and
    ``present`` ``(B, num_classes - 1)`` bool, true where the image contains the class.
    """
    weights = class_fractions(labels, tuple(feature_map.shape[2:]), num_classes).flatten(2).to(feature_map.dtype)
    mass = weights.sum(dim=2)
    weighted_sums = torch.einsum("bks,bds->bkd", weights, feature_map.flatten(2))
    prototypes = weighted_sums / mass.clamp_min(torch.finfo(mass.dtype).tiny)[..., None]
    return prototypes, mass > 0


def greedy_cosine_matching(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy one-to-one matching of the rows of ``a`` ``(m, D)`` and ``b`` ``(k, D)`` by cosine similarity.

    Repeatedly pairs the most similar unpaired rows. Computed without gradient; returns index
    tensors ``(rows_a, rows_b)`` of length ``min(m, k)`` on ``a``'s device, sorted by ``rows_a``.
    """
    with torch.no_grad():
        similarity = (F.normalize(a.detach().float(), dim=1) @ F.normalize(b.detach().float(), dim=1).T).cpu()
        pairs = []
        for _ in range(min(similarity.shape)):
            i, j = divmod(int(similarity.argmax()), similarity.shape[1])
            pairs.append((i, j))
            similarity[i, :] = -torch.inf
            similarity[:, j] = -torch.inf
    index = torch.tensor(sorted(pairs), dtype=torch.long, device=a.device).reshape(-1, 2)
    return index[:, 0], index[:, 1]


class FeaturePairs(NamedTuple):
    """Paired CRA embeddings: row i of ``u`` (buffer side) ↔ row i of ``v`` (current side).

    ``groups`` ``(n,)`` holds each pair's foreground class index (0 = first foreground class)
    for class-prototype pairing, and 0 for image-level pairings.
    """

    u: Tensor
    v: Tensor
    groups: Tensor


def pair_features(
    buffer_maps: Tensor,
    current_maps: Tensor,
    buffer_labels: Tensor | None,
    current_labels: Tensor | None,
    method: str,
    mapping: FeatureMappingBlock | None,
    num_classes: int,
    keys: tuple[Tensor, Tensor] | None = None,
) -> FeaturePairs | None:
    """Form paired embeddings of buffer and current bottleneck features.

    ``buffer_maps`` ``(B_m, C, *S)`` and ``current_maps`` ``(B_d, C, *S)`` are the features to
    align; labels (needed for ``"class_prototype"`` only) are as in :func:`class_fractions`.
    With ``mapping`` both branches go through the same block in one call (shared BatchNorm
    statistics); without it the embeddings are GAP of the raw features (raw masked means for
    prototypes). Pairs are chosen by cosine similarity of ``keys`` = ``(buffer_key_maps,
    current_key_maps)`` ``(B_m, K, *S)``, ``(B_d, K, *S)`` when given (a space outside the one
    being optimised, e.g. the previous network's features), else of the embeddings themselves.
    Prototypes are paired one-to-one within their class. Assignments are computed without
    gradient; gradients reach both branches through the selected rows. Returns ``None`` when
    fewer than ``MIN_SAMPLES`` pairs can be formed (the caller skips the loss).
    """
    if method == "class_prototype":
        if buffer_labels is None or current_labels is None:
            raise ValueError("pairing 'class_prototype' needs the label maps of both batches")
        u, v, groups = _pair_prototypes(buffer_maps, current_maps, buffer_labels, current_labels, mapping, num_classes, keys)
        if u.shape[0] < MIN_SAMPLES:
            return None
        if mapping is not None:
            u, v = _shared(mapping.head, u, v)
        return FeaturePairs(u, v, groups)
    if method not in ("similarity", "index"):
        raise ValueError(f"unknown feature pairing {method!r}; use one of {PAIRING_METHODS} (config key continual.pairing)")
    buffer_embeddings, current_embeddings = _shared(lambda maps: _embed_images(maps, mapping), buffer_maps, current_maps)
    if method == "similarity":
        key_u, key_v = (buffer_embeddings, current_embeddings) if keys is None else map(global_average_pool, keys)
        rows, cols = greedy_cosine_matching(key_u, key_v)
    else:
        rows = cols = torch.arange(min(buffer_embeddings.shape[0], current_embeddings.shape[0]), device=buffer_maps.device)
    if rows.shape[0] < MIN_SAMPLES:
        return None
    return FeaturePairs(buffer_embeddings[rows], current_embeddings[cols], torch.zeros_like(rows))


def _pair_prototypes(
    buffer_maps: Tensor,
    current_maps: Tensor,
    buffer_labels: Tensor,
    current_labels: Tensor,
    mapping: FeatureMappingBlock | None,
    num_classes: int,
    keys: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class prototypes (of the projected maps when ``mapping`` is given) paired one-to-one within each class.

    Returns ``(U, V, groups)``: prototypes ``(n_pairs, D)`` before the mapping head and class indices ``(n_pairs,)``.
    """
    if mapping is not None:
        buffer_maps, current_maps = _shared(mapping.project, buffer_maps, current_maps)
    buffer_protos, buffer_present = class_prototypes(buffer_maps, buffer_labels, num_classes)
    current_protos, current_present = class_prototypes(current_maps, current_labels, num_classes)
    if keys is None:
        buffer_keys, current_keys = buffer_protos, current_protos
    else:
        with torch.no_grad():
            buffer_keys = class_prototypes(keys[0], buffer_labels, num_classes)[0]
            current_keys = class_prototypes(keys[1], current_labels, num_classes)[0]
    u_parts, v_parts, group_parts = [], [], []
    for k in range(num_classes - 1):
        buffer_rows = buffer_present[:, k].nonzero().flatten()
        current_rows = current_present[:, k].nonzero().flatten()
        rows, cols = greedy_cosine_matching(buffer_keys[buffer_rows, k], current_keys[current_rows, k])
        u_parts.append(buffer_protos[buffer_rows[rows], k])
        v_parts.append(current_protos[current_rows[cols], k])
        group_parts.append(torch.full_like(rows, k))
    return torch.cat(u_parts), torch.cat(v_parts), torch.cat(group_parts)


def _embed_images(feature_maps: Tensor, mapping: FeatureMappingBlock | None) -> Tensor:
    """``(B, C, *S)`` → ``(B, E)``: the mapping block's embedding, or GAP of the raw features."""
    return global_average_pool(feature_maps) if mapping is None else mapping(feature_maps)


def _shared(fn: Callable[[Tensor], Tensor], first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``fn`` to both tensors in one call (shared BatchNorm statistics) and split the result."""
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(
            f"buffer and current features must have the same shape per sample, got {tuple(first.shape[1:])} and "
            f"{tuple(second.shape[1:])}; store buffer samples with the training patch size (config key net.patch_size)"
        )
    out = fn(torch.cat([first, second]))
    return out[: first.shape[0]], out[first.shape[0] :]
