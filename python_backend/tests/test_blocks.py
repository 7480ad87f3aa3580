"""Tests for dakr.continual.blocks: mapping block shapes, reductions, prototypes and pairing."""

from __future__ import annotations

import pytest
import torch

from dakr.continual.blocks import (
    FeatureMappingBlock,
    SafeBatchNorm1d,
    class_fractions,
    class_prototypes,
    greedy_cosine_matching,
    pair_features,
    reduce_features,
)

SPATIAL = {2: (6, 5), 3: (4, 3, 5)}


# ---- mapping block -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mapping_block_shapes(spatial_dims: int) -> None:
    block = FeatureMappingBlock(in_channels=8, hidden=16, out_dim=4, spatial_dims=spatial_dims)
    maps = torch.randn(3, 8, *SPATIAL[spatial_dims])
    assert block.project(maps).shape == (3, 16, *SPATIAL[spatial_dims])
    assert block.head(torch.randn(5, 16)).shape == (5, 4)
    assert block(maps).shape == (3, 4)


def test_mapping_block_forward_is_head_of_pooled_projection() -> None:
    block = FeatureMappingBlock(in_channels=3, hidden=8, out_dim=2, spatial_dims=2).eval()
    maps = torch.randn(4, 3, 5, 5)
    expected = block.head(block.project(maps).mean(dim=(2, 3)))
    assert torch.allclose(block(maps), expected, atol=1e-6)


def test_mapping_block_rejects_other_spatial_dims() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        FeatureMappingBlock(in_channels=3, spatial_dims=1)


def test_head_accepts_a_single_vector_in_training_using_running_statistics() -> None:
    block = FeatureMappingBlock(in_channels=3, hidden=8, out_dim=2, spatial_dims=2).train()
    block.head(torch.randn(16, 8) * 3 + 1)  # updates the running statistics
    norm = block.mlp[1]
    assert isinstance(norm, SafeBatchNorm1d)
    running_mean = norm.running_mean.clone()
    vector = torch.randn(1, 8)
    out = block.head(vector)
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    assert torch.equal(norm.running_mean, running_mean)  # a single sample does not move the statistics
    block.eval()
    assert torch.allclose(block.head(vector), out, atol=1e-6)  # same as eval-mode normalisation


def test_batch_norm_with_several_samples_uses_batch_statistics_in_training() -> None:
    norm = SafeBatchNorm1d(3).train()
    out = norm(torch.randn(10, 3) * 5 + 2)
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_projection_accepts_one_value_per_channel_in_training(spatial_dims: int) -> None:
    block = FeatureMappingBlock(in_channels=3, hidden=8, out_dim=2, spatial_dims=spatial_dims).train()
    assert block(torch.randn(1, 3, *([1] * spatial_dims))).shape == (1, 2)


# ---- reductions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reduce_features_shapes(spatial_dims: int) -> None:
    maps = torch.randn(2, 5, *([4] * spatial_dims))
    assert reduce_features(maps, "gap").shape == (2, 5)
    assert reduce_features(maps, "pooled", pool_size=2).shape == (2, 5 * 2**spatial_dims)


def test_reduce_features_values() -> None:
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert reduce_features(maps, "gap").item() == pytest.approx(7.5)  # mean of 0..15
    # 2x2 blocks of [[0,1,2,3],[4,5,6,7],...]: (0+1+4+5)/4=2.5, (2+3+6+7)/4=4.5, 10.5, 12.5
    assert reduce_features(maps, "pooled", pool_size=2).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    with pytest.raises(ValueError, match="continual.cna_reduction"):
        reduce_features(maps, "max")


# ---- class prototypes ----------------------------------------------------------------------------------


def test_class_fractions_are_area_fractions_per_cell() -> None:
    labels = torch.tensor([[[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]])  # (1, 4, 4)
    fractions = class_fractions(labels, (2, 2), num_classes=3)
    assert fractions.shape == (1, 2, 2, 2)
    # top-left cell holds 1,1,1,2 -> class 1: 3/4, class 2: 1/4; bottom-right cell is all class 2
    assert fractions[0, 0].tolist() == [[0.75, 0.0], [0.0, 0.0]]
    assert fractions[0, 1].tolist() == [[0.25, 0.0], [0.0, 1.0]]


def test_class_prototypes_equal_hand_computed_masked_means() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [0.0, 30.0]]]])  # (1, 2, 2, 2)
    labels = torch.tensor([[[[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]]])  # (1, 1, 4, 4)
    prototypes, present = class_prototypes(features, labels, num_classes=4)
    assert prototypes.shape == (1, 3, 2)
    assert present.tolist() == [[True, True, False]]
    # class 1: only the top-left cell, weight 3/4 -> mean is that cell's vector (1, 10)
    assert prototypes[0, 0].tolist() == pytest.approx([1.0, 10.0])
    # class 2: top-left weight 1/4, bottom-right weight 1 -> ((1/4)*(1,10) + (4,30)) / (5/4) = (3.4, 26)
    assert prototypes[0, 1].tolist() == pytest.approx([3.4, 26.0])


def test_class_prototypes_reject_labels_outside_the_class_range() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        class_prototypes(torch.randn(1, 2, 2, 2), torch.full((1, 2, 2), 3), num_classes=3)


def prototype_batch(spatial_dims: int, n_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose two halves are classes 1 and 2, with features constant within each half."""
    g = torch.Generator().manual_seed(seed)
    size = (4,) * spatial_dims
    labels = torch.ones(n_images, 1, *size, dtype=torch.long)
    labels[:, :, 2:] = 2
    maps = torch.randn(n_images, 6, *([1] * spatial_dims), generator=g).expand(-1, -1, *size).clone()
    maps[:, :, 2:] = torch.randn(n_images, 6, *([1] * spatial_dims), generator=g)
    return maps, labels


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_class_prototype_pairing_pairs_within_class_by_cosine(spatial_dims: int) -> None:
    buffer_maps, buffer_labels = prototype_batch(spatial_dims, 3, seed=0)
    order = torch.tensor([2, 0, 1])
    current_maps = buffer_maps[order] * 2.0 + 0.01 * torch.randn_like(buffer_maps)
    current_labels = buffer_labels[order]
    u, v, _ = pair_features(buffer_maps, current_maps, buffer_labels, current_labels, "class_prototype", None, num_classes=3)
    assert u.shape == v.shape == (6, 6)  # 3 images x 2 classes
    # every current prototype is a scaled copy of its buffer partner: cosine ~ 1 row by row
    assert torch.nn.functional.cosine_similarity(u, v).min() > 0.99
    first_half = (slice(None), slice(None), slice(0, 2))
    assert torch.allclose(u[:3], buffer_maps[first_half].flatten(2).mean(2), atol=1e-5)  # class 1, buffer order


def test_class_prototype_pairing_with_mapping_gives_head_embeddings() -> None:
    buffer_maps, buffer_labels = prototype_batch(2, 3, seed=1)
    current_maps, current_labels = prototype_batch(2, 4, seed=2)
    mapping = FeatureMappingBlock(in_channels=6, hidden=8, out_dim=5, spatial_dims=2)
    u, v, _ = pair_features(buffer_maps, current_maps, buffer_labels, current_labels, "class_prototype", mapping, 3)
    assert u.shape == v.shape == (6, 5)  # min(3, 4) pairs per class, two classes


def test_class_prototype_pairing_needs_labels() -> None:
    maps = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="label maps"):
        pair_features(maps, maps, None, None, "class_prototype", None, 3)


def test_class_prototype_pairing_only_pairs_shared_classes_and_returns_none_below_four() -> None:
    buffer_maps, buffer_labels = prototype_batch(2, 3, seed=0)
    current_maps, current_labels = prototype_batch(2, 3, seed=1)
    current_labels[current_labels == 2] = 0  # current batch has no class 2: only 3 pairs of class 1
    assert pair_features(buffer_maps, current_maps, buffer_labels, current_labels, "class_prototype", None, 3) is None
    mapping = FeatureMappingBlock(in_channels=6, hidden=8, out_dim=5, spatial_dims=2)
    assert pair_features(buffer_maps, current_maps, buffer_labels, current_labels, "class_prototype", mapping, 3) is None


# ---- similarity and index pairing ------------------------------------------------------------------------


def test_greedy_cosine_matching_takes_the_globally_best_pair_first() -> None:
    a = torch.tensor([[1.0, 0.5], [1.0, 1.0]])  # angles 26.6° and 45°
    b = torch.tensor([[1.0, 0.9], [1.0, -0.5]])  # angles 42° and -26.6°
    rows, cols = greedy_cosine_matching(a, b)
    # cos(a1,b0)=cos 3°=0.999 is the best pair, although a0's own best is also b0 (cos 15.4°=0.964);
    # so a0 is left with b1 (cos 53°). Row-by-row matching would give a0-b0, a1-b1 instead.
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_similarity_pairing_recovers_a_planted_permutation() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(6, 16, generator=g)
    buffer_maps = vectors[:, :, None, None].expand(-1, -1, 3, 3)
    permutation = torch.tensor([3, 5, 0, 1, 4, 2])
    current_maps = 3.0 * buffer_maps[permutation] + 0.01 * torch.randn(6, 16, 3, 3, generator=g)
    u, v, _ = pair_features(buffer_maps, current_maps, None, None, "similarity", None, num_classes=3)
    assert u.shape == v.shape == (6, 16)
    assert torch.allclose(u, vectors, atol=1e-6)  # sorted by buffer row
    assert torch.allclose(v / 3.0, vectors, atol=0.02)


def test_similarity_pairing_matches_min_batch_size_pairs() -> None:
    maps = torch.randn(7, 4, 2, 2)
    u, v, _ = pair_features(maps[:5], maps, None, None, "similarity", None, 3)
    assert u.shape == v.shape == (5, 4)
    assert torch.allclose(u, v)  # each buffer image finds its identical copy


def test_index_pairing_pairs_by_position_and_truncates() -> None:
    buffer_maps, current_maps = torch.randn(6, 4, 3, 3), torch.randn(4, 4, 3, 3)
    u, v, _ = pair_features(buffer_maps, current_maps, None, None, "index", None, 3)
    assert torch.allclose(u, buffer_maps[:4].mean(dim=(2, 3)))
    assert torch.allclose(v, current_maps.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["similarity", "index"])
def test_too_few_pairs_return_none(method: str) -> None:
    assert pair_features(torch.randn(3, 4, 2, 2), torch.randn(8, 4, 2, 2), None, None, method, None, 3) is None
    assert pair_features(torch.randn(4, 4, 2, 2), torch.randn(8, 4, 2, 2), None, None, method, None, 3) is not None


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", ["similarity", "index"])
def test_image_pairing_with_mapping_gives_embeddings(method: str, spatial_dims: int) -> None:
    mapping = FeatureMappingBlock(in_channels=4, hidden=8, out_dim=3, spatial_dims=spatial_dims)
    u, v, _ = pair_features(torch.randn(5, 4, *SPATIAL[spatial_dims]), torch.randn(6, 4, *SPATIAL[spatial_dims]), None, None, method, mapping, 3)
    assert u.shape == v.shape == (5, 3)


def test_pairing_rejects_unknown_method_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="continual.pairing"):
        pair_features(torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2), None, None, "random", None, 3)
    with pytest.raises(ValueError, match="same shape"):
        pair_features(torch.randn(4, 2, 2, 2), torch.randn(4, 2, 3, 3), None, None, "index", None, 3)


# ---- gradients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["class_prototype", "similarity", "index"])
def test_gradients_reach_both_branches_and_the_mapping_block(method: str) -> None:
    buffer_maps, buffer_labels = prototype_batch(2, 4, seed=3)
    current_maps, current_labels = prototype_batch(2, 5, seed=4)
    buffer_maps.requires_grad_(True)
    current_maps.requires_grad_(True)
    mapping = FeatureMappingBlock(in_channels=6, hidden=8, out_dim=5, spatial_dims=2)
    u, v, _ = pair_features(buffer_maps, current_maps, buffer_labels, current_labels, method, mapping, 3)
    (u * v).sum().backward()
    assert buffer_maps.grad.abs().sum() > 0 and current_maps.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping.parameters())


def test_gradient_flows_through_selected_rows_not_through_the_assignment() -> None:
    g = torch.Generator().manual_seed(5)
    buffer_maps = torch.randn(5, 4, 2, 2, generator=g, requires_grad=True)
    current_maps = torch.randn(6, 4, 2, 2, generator=g, requires_grad=True)
    weights_u, weights_v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    u, v, _ = pair_features(buffer_maps, current_maps, None, None, "similarity", None, 3)
    ((u * weights_u).sum() + (v * weights_v).sum()).backward()
    # Reference: the same assignment as fixed integer indices; a differentiable assignment would add terms.
    rows, cols = greedy_cosine_matching(buffer_maps.mean(dim=(2, 3)), current_maps.mean(dim=(2, 3)))
    buffer_ref = buffer_maps.detach().clone().requires_grad_(True)
    current_ref = current_maps.detach().clone().requires_grad_(True)
    u_ref, v_ref = buffer_ref.mean(dim=(2, 3))[rows], current_ref.mean(dim=(2, 3))[cols]
    ((u_ref * weights_u).sum() + (v_ref * weights_v).sum()).backward()
    assert torch.allclose(buffer_maps.grad, buffer_ref.grad)
    assert torch.allclose(current_maps.grad, current_ref.grad)
    unpaired = sorted(set(range(6)) - set(cols.tolist()))
    assert current_maps.grad[unpaired].abs().sum() == 0
