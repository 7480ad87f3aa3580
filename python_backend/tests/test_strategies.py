"""Strategies: registry, hook behaviour of each method, and a full stage for every strategy."""

import copy

import numpy as np
import pytest
import torch

from dakr.config import apply_overrides, ExperimentConfig
from dakr.continual.buffer import ReplayBuffer
from dakr.continual.strategies import MAIN_STRATEGIES, STRATEGIES, get_strategy
from dakr.data.preprocessing import PreprocessedCase
from dakr.data.sampling import PatchSampler
from dakr.nets import BottleneckTap, build_network
from dakr.pipeline import adapt
from dakr.training import Batch, StageContext

from synthetic import TINY_OVERRIDES


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert set(MAIN_STRATEGIES) <= set(STRATEGIES)
    assert {"distill", "dakr-cna", "dakr-cra"} <= set(STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'icarl'"):
        get_strategy("icarl")


def _context(config, buffer=True, seed=0):
    torch.manual_seed(seed)
    model = build_network(config.net, num_classes=3)
    previous = copy.deepcopy(model).eval()
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(12, 1, 32, 32)).astype(np.float32)
    labels = np.zeros((12, 1, 32, 32), np.uint8)
    labels[:, :, 8:24, 8:24] = 2
    labels[:, :, 12:20, 12:20] = 1
    return StageContext(
        config=config, model=model, sampler=PatchSampler([PreprocessedCase("c0", images[:, 0], labels[:, 0], None)], (32, 32), 2, 0.5),
        num_classes=3, device=torch.device("cpu"), rng=rng, stage=2,
        site="s2", previous_model=previous,
        buffer=ReplayBuffer(images, labels, np.array(["s1"] * 12)) if buffer else None,
    )


def _batch(ctx, strategy, size=6):
    images = torch.randn(size, 1, 32, 32)
    labels = torch.zeros(size, 1, 32, 32, dtype=torch.long)
    labels[:, :, 4:28, 4:28] = 2
    labels[:, :, 10:22, 10:22] = 1
    return strategy.adapt_batch(ctx, Batch(images, labels, torch.zeros(size, dtype=torch.bool)))


def _losses(name, **overrides):
    config = apply_overrides(ExperimentConfig(), {**TINY_OVERRIDES, **overrides})
    ctx = _context(config)
    strategy = get_strategy(name)(config)
    strategy.before_stage(ctx)
    batch = _batch(ctx, strategy)
    tap = BottleneckTap(ctx.model)
    logits = ctx.model(batch.images)
    return strategy.extra_losses(ctx, batch, logits, tap.features), batch, ctx, strategy


def test_replay_appends_buffer_samples():
    _, batch, _, _ = _losses("replay")
    assert batch.size == 6 + TINY_OVERRIDES["continual.buffer_batch_size"]
    assert batch.from_buffer.sum() == TINY_OVERRIDES["continual.buffer_batch_size"]


def test_dakr_alignment_terms():
    losses, _, _, _ = _losses("dakr", **{"continual.pairing": "index"})
    assert set(losses) == {"cna", "cra"}
    # Identical current and previous networks: CNA is 1 - nHSIC(X, X) = 0.
    assert losses["cna"].item() == pytest.approx(0.0, abs=1e-4)
    # The default unbiased nHSIC lies in [-1, 1], so 1 - nHSIC lies in [0, 2].
    assert 0.0 < losses["cra"].item() <= 2 * TINY_OVERRIDES.get("continual.lambda_cra", ExperimentConfig().continual.lambda_cra) + 1e-6
    for pairing in ("class_prototype", "similarity"):
        assert "cra" in _losses("dakr", **{"continual.pairing": pairing})[0]
    assert set(_losses("dakr-cna")[0]) == {"cna"}
    assert set(_losses("dakr-cra")[0]) == {"cra"}
    assert set(_losses("dakr", **{"continual.kernel": "linear", "continual.cna_reduction": "pooled"})[0]) == {"cna", "cra"}


def test_cna_grows_when_the_network_drifts():
    config = apply_overrides(ExperimentConfig(), {**TINY_OVERRIDES, "continual.kernel": "linear"})
    ctx = _context(config)
    with torch.no_grad():
        for parameter in ctx.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    strategy = get_strategy("dakr-cna")(config)
    batch = _batch(ctx, strategy)
    tap = BottleneckTap(ctx.model)
    logits = ctx.model(batch.images)
    assert strategy.extra_losses(ctx, batch, logits, tap.features)["cna"].item() > 0.01


def test_lwf_and_distill_are_zero_for_an_unchanged_network():
    assert _losses("lwf")[0]["lwf"].item() == pytest.approx(0.0, abs=1e-6)
    assert _losses("distill")[0]["distill"].item() == pytest.approx(0.0, abs=1e-8)


def test_ewc_penalises_moving_important_weights():
    config = apply_overrides(ExperimentConfig(), TINY_OVERRIDES)
    ctx = _context(config)
    strategy = get_strategy("ewc")(config)
    strategy.before_stage(ctx)  # no inherited Fisher: estimated on the buffer with the previous network
    assert strategy.fisher and all(torch.isfinite(f).all() for f in strategy.fisher.values())
    batch = _batch(ctx, strategy)
    tap = BottleneckTap(ctx.model)
    at_anchor = strategy.extra_losses(ctx, batch, ctx.model(batch.images), tap.features)["ewc"].item()
    with torch.no_grad():
        for parameter in ctx.model.parameters():
            parameter.add_(0.1)
    moved = strategy.extra_losses(ctx, batch, ctx.model(batch.images), tap.features)["ewc"].item()
    assert at_anchor == pytest.approx(0.0, abs=1e-9) and moved > 0.0
    saved = strategy.state_tensors()
    assert any(k.startswith("fisher.") for k in saved) and any(k.startswith("anchor.") for k in saved)


def test_joint_trains_on_every_site_seen():
    config = apply_overrides(ExperimentConfig(), TINY_OVERRIDES)
    assert get_strategy("joint")(config).training_sites("c", ["a", "b"]) == ["a", "b", "c"]
    assert get_strategy("replay")(config).training_sites("c", ["a", "b"]) == ["c"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_adapts_a_store(registered_store, name):
    base = adapt(registered_store, "siteA", strategy=name, overrides=TINY_OVERRIDES)
    version = adapt(registered_store, "siteB", strategy=name, overrides=TINY_OVERRIDES)
    assert version.parent == base.id and version.strategy == name
    assert registered_store.site_dice(version.id, "siteA") is not None
    assert registered_store.site_dice(base.id, "siteB") is not None


def test_cna_with_cached_buffer_features_equals_a_full_previous_pass():
    config = apply_overrides(ExperimentConfig(), {**TINY_OVERRIDES, "continual.kernel": "linear"})
    ctx = _context(config)
    with torch.no_grad():
        for parameter in ctx.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    strategy = get_strategy("dakr-cna")(config)
    strategy.before_stage(ctx)
    assert len(strategy.buffer_features["bottleneck"]) == len(ctx.buffer)
    batch = _batch(ctx, strategy)
    assert batch.buffer_index is not None and len(batch.buffer_index) == int(batch.from_buffer.sum())
    tap = BottleneckTap(ctx.model)
    logits = ctx.model(batch.images)
    cached = strategy.extra_losses(ctx, batch, logits, tap.features)["cna"]
    strategy.buffer_features = {}
    full = strategy.extra_losses(ctx, batch, logits, tap.features)["cna"]
    assert cached.item() == pytest.approx(full.item(), rel=1e-4, abs=1e-6)


def test_buffer_logit_term_is_zero_unchanged_grows_with_drift_and_matches_a_full_pass():
    losses, batch, ctx, strategy = _losses("dakr", **{"continual.lambda_buffer_logits": 1.0})
    assert set(losses) == {"cna", "cra", "logits"}
    assert losses["logits"].item() == pytest.approx(0.0, abs=1e-10)
    assert len(strategy.buffer_features["logits"]) == len(ctx.buffer)
    with torch.no_grad():
        for parameter in ctx.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    tap = BottleneckTap(ctx.model)
    logits = ctx.model(batch.images)
    cached = strategy.extra_losses(ctx, batch, logits, tap.features)["logits"]
    buffered = batch.from_buffer
    expected = (logits[buffered] - ctx.previous_model(batch.images[buffered])).pow(2).mean()
    assert cached.item() > 1e-4 and cached.item() == pytest.approx(expected.item(), rel=1e-4)
    strategy.buffer_features = {}
    assert strategy.extra_losses(ctx, batch, logits, tap.features)["logits"].item() == pytest.approx(cached.item(), rel=1e-4)


def test_alignment_terms_with_zero_weight_are_not_computed():
    losses, _, _, strategy = _losses("dakr", **{"continual.lambda_cna": 0.0, "continual.lambda_cra": 0.0,
                                                "continual.lambda_buffer_logits": 0.5})
    assert set(losses) == {"logits"}
    assert set(strategy.buffer_features) == {"logits"}  # the previous network computes only what a term reads
    assert set(_losses("dakr")[0]) == {"cna", "cra"}
