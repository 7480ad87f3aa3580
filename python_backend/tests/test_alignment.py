"""DAKR's alignment terms carry signal: estimators, reductions, per-class CRA, queue, warm-up, diagnostics."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dakr.config import ConfigError, ExperimentConfig, apply_overrides
from dakr.continual.alignment import PairQueue, cna_vectors, grouped_alignment, within_group_shuffle
from dakr.continual.balance import GradientBalance
from dakr.continual.blocks import sample_positions
from dakr.continual.buffer import ReplayBuffer
from dakr.continual.hsic import normalized_hsic, unbiased_hsic
from dakr.continual.strategies import get_strategy
from dakr.data.preprocessing import PreprocessedCase
from dakr.data.sampling import PatchSampler
from dakr.nets import BottleneckTap, build_network, encode_to_bottleneck
from dakr.nets.factory import DecoderTap
from dakr.pipeline import adapt
from dakr.training import Batch, StageContext, Strategy
from dakr.training.trainer import Trainer

from synthetic import SITE_CONTRASTS, TINY_OVERRIDES, case_arrays
from test_hsic import np_gram

KERNELS = ("gaussian", "linear")


# ---- unbiased HSIC against plain NumPy references ------------------------------------------------


def np_unbiased_hsic(x: np.ndarray, y: np.ndarray, kernel: str) -> float:
    """HSIC_1 of Song et al. (2012), eq. (5), in float64."""
    n = len(x)
    k, l = np_gram(x, kernel), np_gram(y, kernel)
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    value = np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ l @ one)
    return float(value / (n * (n - 3)))


def np_u_statistic_hsic(x: np.ndarray, y: np.ndarray, kernel: str) -> float:
    """The same estimator as an explicit U-statistic over all ordered 4-tuples of distinct samples."""
    k, l = np_gram(x, kernel), np_gram(y, kernel)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(len(x)), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2.0 * k[i, j] * l[i, q]
        count += 1
    return total / count


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_hsic_matches_numpy_references(kernel):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = y + x[:, :3]
    # Centring (the functions centre features first) leaves both kernels unchanged.
    x_np, y_np = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    assert unbiased_hsic(x, y, kernel).item() == pytest.approx(np_unbiased_hsic(x_np, y_np, kernel), rel=1e-4)
    small_x, small_y = x_np[:6] - x_np[:6].mean(0), y_np[:6] - y_np[:6].mean(0)
    assert np_unbiased_hsic(small_x, small_y, kernel) == pytest.approx(np_u_statistic_hsic(small_x, small_y, kernel), rel=1e-9)
    assert unbiased_hsic(x[:6], y[:6], kernel).item() == pytest.approx(np_unbiased_hsic(small_x, small_y, kernel), rel=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_normalised_hsic_identities(kernel):
    x = torch.randn(16, 6)
    assert normalized_hsic(x, x, kernel, "unbiased").item() == pytest.approx(1.0, abs=1e-5)
    assert normalized_hsic(x, 3.0 * x[:, [2, 0, 1, 5, 4, 3]], kernel, "unbiased").item() == pytest.approx(1.0, abs=1e-4)
    assert normalized_hsic(x, torch.ones(16, 2), kernel, "unbiased").item() == 0.0
    assert normalized_hsic(x[:3], x[:3], kernel, "unbiased") is None
    with pytest.raises(ValueError, match="continual.hsic_estimator"):
        normalized_hsic(x, x, kernel, "jackknife")


@pytest.mark.parametrize("n", [8, 16])
def test_independent_data_score_near_zero_unbiased_but_not_biased(n):
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)) for _ in range(100)]
    biased = np.mean([normalized_hsic(x, y, "gaussian", "biased").item() for x, y in pairs])
    unbiased = [normalized_hsic(x, y, "gaussian", "unbiased").item() for x, y in pairs]
    assert biased > 0.5  # the small-batch floor of the biased form
    assert abs(np.mean(unbiased)) < 0.05
    dependent = torch.randn(n, 16, generator=g)
    assert normalized_hsic(dependent, dependent + 0.3 * torch.randn(n, 16, generator=g), "gaussian", "unbiased").item() > 0.5


# ---- grouping, shuffles, positions, queue ---------------------------------------------------------


def test_within_group_shuffle_moves_every_row_inside_its_group():
    groups = torch.tensor([0, 1, 0, 1, 0, 2])
    permutation = within_group_shuffle(groups)
    assert sorted(permutation.tolist()) == list(range(6))
    assert torch.equal(groups[permutation], groups)
    assert (permutation != torch.arange(6))[:5].all() and permutation[5] == 5


def test_grouped_alignment_averages_groups_with_enough_pairs():
    x, y = torch.randn(10, 4), torch.randn(10, 4)
    groups = torch.tensor([0] * 6 + [1] * 4)
    expected = (normalized_hsic(x[:6], y[:6], "linear", "unbiased") + normalized_hsic(x[6:], y[6:], "linear", "unbiased")) / 2
    assert grouped_alignment(x, y, groups, "linear", "unbiased").item() == pytest.approx(expected.item())
    only_first = normalized_hsic(x[:6], y[:6], "linear", "unbiased").item()
    assert grouped_alignment(x, y, groups, "linear", "unbiased", min_pairs=5).item() == pytest.approx(only_first)
    assert grouped_alignment(x, y, groups, "linear", "unbiased", min_pairs=7) is None


def test_sample_positions_pairs_the_same_positions():
    first = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    x, y = sample_positions(first, 2 * first, count=10)
    assert x.shape == (10, 3) and torch.equal(y, 2 * x)
    assert sample_positions(first, first, count=1000)[0].shape == (32, 3)


def test_queue_adds_past_pairs_without_gradient():
    queue = PairQueue(size=3)
    first = torch.randn(2, 4, requires_grad=True)
    x, _, groups = queue.join(first, first.detach(), torch.zeros(2, dtype=torch.long))
    assert x.shape[0] == 2
    second = torch.randn(4, 4, requires_grad=True)
    x, y, groups = queue.join(second, second.detach(), torch.zeros(4, dtype=torch.long))
    assert x.shape[0] == 6 and groups.tolist() == [0] * 6
    x.sum().backward()
    assert first.grad is None and torch.equal(second.grad, torch.ones(4, 4))
    x, _, _ = queue.join(torch.randn(1, 4), torch.randn(1, 4), torch.zeros(1, dtype=torch.long))
    assert x.shape[0] == 1 + 3  # the queue keeps the latest three pairs
    assert PairQueue(size=0).join(first, first, torch.zeros(2))[0] is first


def test_new_options_are_validated():
    with pytest.raises(ConfigError, match="continual.cna_reduction"):
        apply_overrides(ExperimentConfig(), {"continual.cna_reduction": "max"})
    with pytest.raises(ConfigError, match="continual.cra_pair_space"):
        apply_overrides(ExperimentConfig(), {"continual.cra_pair_space": "labels"})
    with pytest.raises(ConfigError, match="continual.cra_gradient"):
        apply_overrides(ExperimentConfig(), {"continual.cra_gradient": "neither"})
    with pytest.raises(ConfigError, match="continual.cra_reach"):
        apply_overrides(ExperimentConfig(), {"continual.cra_reach": "decoder"})
    with pytest.raises(ConfigError, match="continual.hsic_queue"):
        apply_overrides(ExperimentConfig(), {"continual.hsic_queue": -1})
    with pytest.raises(ConfigError, match="continual.cna_layer"):
        apply_overrides(ExperimentConfig(), {"continual.cna_layer": "output"})
    with pytest.raises(ConfigError, match="Fix: set continual.cna_reduction"):
        apply_overrides(ExperimentConfig(), {"continual.cna_layer": "decoder", "continual.cna_reduction": "prenorm"})
    defaults = ExperimentConfig().continual
    assert (defaults.cna_reduction, defaults.cra_scoring, defaults.cra_pair_space) == ("pooled", "per_class", "previous")


# ---- real bottleneck features -------------------------------------------------------------------


def site_sampler(site: str, cases: int = 4, seed: int = 0) -> PatchSampler:
    rng = np.random.default_rng(seed)
    reference = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    data = [PreprocessedCase(f"{site}_{i}", *case_arrays(rng, SITE_CONTRASTS[site]), reference) for i in range(cases)]
    return PatchSampler(data, (32, 32), 2, 0.67)


def config_with(**overrides) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), {**TINY_OVERRIDES, "train.checkpoint_every": 0, **overrides})


def test_default_cna_reduction_separates_matched_from_shuffled_pairs_at_initialisation():
    """Bottleneck features of a network at initialisation and of a drifted copy, on synthetic slices."""
    images = torch.cat([torch.from_numpy(site_sampler(site).sample(16, np.random.default_rng(1))[0]) for site in ("siteA", "siteB")])
    margins = {}
    for reduction, estimator in (("default", "default"), ("gap", "biased")):
        overrides = {} if reduction == "default" else {"continual.cna_reduction": reduction, "continual.hsic_estimator": estimator}
        config = apply_overrides(ExperimentConfig(), {"net.filters": [8, 16, 32], "net.patch_size": [32, 32], **overrides})
        torch.manual_seed(0)
        previous = build_network(config.net, num_classes=3).eval()
        current = copy.deepcopy(previous)
        with torch.no_grad():
            for parameter in current.parameters():
                parameter.add_(0.3 * parameter.std() * torch.randn_like(parameter))
            x, y = cna_vectors(encode_to_bottleneck(current, images), encode_to_bottleneck(previous, images), config.continual)
        groups = torch.zeros(len(x), dtype=torch.long)
        kernel, estimator = config.continual.kernel, config.continual.hsic_estimator
        matched = grouped_alignment(x, y, groups, kernel, estimator).item()
        shuffled = grouped_alignment(x, y[within_group_shuffle(groups)], groups, kernel, estimator).item()
        margins[reduction] = matched - shuffled
    assert margins["default"] > 0.5
    assert margins["default"] > margins["gap"] + 0.2


def stage_context(config: ExperimentConfig, drift: float = 0.0, buffer_size: int = 16) -> StageContext:
    """Stage 2 on site B with a site-A buffer; the previous network is the initial one, the current
    one a copy moved by ``drift`` · N(0, 1) per weight."""
    torch.manual_seed(0)
    model = build_network(config.net, num_classes=3)
    previous = copy.deepcopy(model).eval()
    for parameter in previous.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(drift * torch.randn_like(parameter))
    images, labels = site_sampler("siteA", seed=1).sample(buffer_size, np.random.default_rng(2))
    return StageContext(
        config=config, model=model, sampler=site_sampler("siteB"), num_classes=3, device=torch.device("cpu"),
        rng=np.random.default_rng(0), stage=2, site="siteB", previous_model=previous,
        buffer=ReplayBuffer(images, labels.astype(np.uint8), np.array(["siteA"] * buffer_size)),
    )


def run_stage(name: str, steps: int = 12, progress=None, **overrides):
    """One stage of ``name`` in :func:`stage_context` without drift."""
    config = config_with(**{"train.steps_per_epoch": steps, **overrides})
    ctx = stage_context(config)
    strategy = get_strategy(name)(config)
    Trainer(ctx, strategy, **({} if progress is None else {"progress": progress})).fit()
    return ctx, strategy


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["bottleneck", "decoder"])
def test_a_stage_with_cna_keeps_higher_cna_alignment_than_replay(layer):
    overrides = {"train.lr": 1e-2, "continual.cna_layer": layer}
    dakr_ctx, dakr_strategy = run_stage("dakr-cna", **overrides)
    replay_ctx, _ = run_stage("replay", **overrides)
    measure = get_strategy("dakr-cna")(replay_ctx.config)
    measure.after_stage(replay_ctx)  # the same held batch and measurement on the replay-trained network
    with_cna = dakr_strategy.stage_diagnostics()["cna_nhsic_matched"]
    without = measure.stage_diagnostics()["cna_nhsic_matched"]
    assert with_cna > without


@pytest.mark.slow
def test_a_stage_with_the_buffer_logit_term_drifts_less_on_buffered_samples_than_replay():
    overrides = {"train.lr": 1e-2, "continual.lambda_buffer_logits": 3.0, "continual.lambda_cna": 0.0, "continual.lambda_cra": 0.0}
    _, anchored = run_stage("dakr", **overrides)
    replay_ctx, _ = run_stage("replay", **overrides)
    measure = get_strategy("dakr")(replay_ctx.config)
    measure.before_stage(replay_ctx)  # the previous network's logits of the buffer, as a stage caches them
    measure.after_stage(replay_ctx)
    diagnostics = anchored.stage_diagnostics()
    assert diagnostics["logits_grad_ratio"] > 0.0
    assert diagnostics["logits_drift"] < measure.stage_diagnostics()["logits_drift"]


@pytest.mark.slow
def test_cra_within_class_shuffle_scores_below_matched_pairs_after_training():
    events = []
    _, strategy = run_stage("dakr-cra", progress=events.append, **{"train.batch_size": 8, "continual.buffer_batch_size": 8})
    diagnostics = strategy.stage_diagnostics()
    assert diagnostics["cra_nhsic_matched"] > diagnostics["cra_nhsic_within_class_shuffled"] + 0.05
    assert diagnostics["cra_grad_ratio"] > 0.0
    assert events[-1].stage == "diagnostics" and events[-1].diagnostics == diagnostics


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"continual.cna_reduction": "prenorm", "continual.cra_anchor": "previous", "continual.hsic_queue": 16},
        {"continual.cna_reduction": "spatial", "continual.cra_pair_space": "projection", "continual.cra_scoring": "stacked"},
        {"continual.cna_layer": "decoder", "continual.cna_reduction": "spatial"},
    ],
)
def test_a_stage_leaves_the_previous_network_bitwise_unchanged(overrides):
    config = config_with(**{"train.steps_per_epoch": 3, **overrides})
    ctx = stage_context(config, drift=0.1, buffer_size=8)
    before = {k: v.clone() for k, v in ctx.previous_model.state_dict().items()}
    strategy = get_strategy("dakr")(config)
    Trainer(ctx, strategy).fit()
    after = ctx.previous_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert set(strategy.stage_diagnostics()) >= {"cna_nhsic_matched", "cna_nhsic_shuffled", "cna_grad_ratio"}


def test_warm_up_then_ramp_switches_the_terms_on():
    strategy = get_strategy("dakr")(config_with(**{"continual.align_warmup_steps": 2, "continual.align_ramp_steps": 4}))
    assert [strategy.alignment_weight(step) for step in range(8)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert get_strategy("dakr")(config_with()).alignment_weight(0) == 1.0


def decoder_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last decoder level's feature map of ``model`` on ``images``."""
    tap = DecoderTap(model)
    model(images)
    tap.remove()
    return tap.features


@pytest.mark.parametrize("layer", ["bottleneck", "decoder"])
def test_buffer_only_cna_aligns_buffered_samples_and_skips_the_previous_network_on_the_rest(layer):
    config = config_with(**{"continual.cna_buffer_only": True, "continual.kernel": "linear", "continual.cna_layer": layer})
    ctx = stage_context(config, drift=0.2, buffer_size=8)
    model, previous = ctx.model, ctx.previous_model
    strategy = get_strategy("dakr-cna")(config)
    strategy.before_stage(ctx)
    assert not strategy._current_row_kinds()
    current_images, current_labels = ctx.sampler.sample(4, np.random.default_rng(5))
    batch = strategy.adapt_batch(ctx, Batch(torch.from_numpy(current_images), torch.from_numpy(current_labels), torch.zeros(4, dtype=torch.bool)))
    tap = BottleneckTap(model)
    model(batch.images)
    loss = strategy.extra_losses(ctx, batch, None, tap.features)["cna"]
    rows = batch.from_buffer
    encode = decoder_maps if layer == "decoder" else encode_to_bottleneck
    with torch.no_grad():
        expected = config.continual.lambda_cna * (1.0 - normalized_hsic(
            *cna_vectors(encode(model, batch.images)[rows], encode(previous, batch.images[rows]), config.continual), "linear", "unbiased"
        ))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    strategy.after_stage(ctx)
    assert not model.output_block._forward_hooks


def test_buffer_only_decoder_cna_runs_only_the_previous_encoder_in_a_step():
    """The decoder maps of buffered samples come from the cache; CRA needs only the bottleneck of the rest."""
    config = config_with(**{"continual.cna_buffer_only": True, "continual.cna_layer": "decoder", "continual.cna_reduction": "spatial"})
    ctx = stage_context(config, drift=0.2, buffer_size=8)
    strategy = get_strategy("dakr")(config)
    strategy.before_stage(ctx)
    assert strategy._current_row_kinds() == {"bottleneck"}
    decoder_calls = []
    hook = ctx.previous_model.output_block.register_forward_hook(lambda *args: decoder_calls.append(1))
    current_images, current_labels = ctx.sampler.sample(4, np.random.default_rng(5))
    batch = strategy.adapt_batch(ctx, Batch(torch.from_numpy(current_images), torch.from_numpy(current_labels), torch.zeros(4, dtype=torch.bool)))
    tap = BottleneckTap(ctx.model)
    terms = strategy.extra_losses(ctx, batch, ctx.model(batch.images), tap.features)
    hook.remove()
    assert {"cna", "cra"} <= set(terms) and decoder_calls == []


def cra_stage_and_batch(**overrides) -> tuple[StageContext, Strategy, Batch]:
    """A stage-2 context, a started ``dakr-cra`` strategy and a batch of 8 current + 8 buffered samples."""
    config = config_with(**overrides)
    ctx = stage_context(config, drift=0.2, buffer_size=8)
    strategy = get_strategy("dakr-cra")(config)
    strategy.before_stage(ctx)
    current_images, current_labels = ctx.sampler.sample(8, np.random.default_rng(5))
    current = Batch(torch.from_numpy(current_images), torch.from_numpy(current_labels), torch.zeros(8, dtype=torch.bool))
    return ctx, strategy, strategy.adapt_batch(ctx, current)


@pytest.mark.parametrize(("side", "moved", "fixed"), [("both", ("buffer", "current"), ()),
                                                      ("buffer", ("buffer",), ("current",)),
                                                      ("current", ("current",), ("buffer",))])
def test_cra_gradient_reaches_only_the_chosen_side(side, moved, fixed):
    ctx, strategy, batch = cra_stage_and_batch(**{"continual.cra_gradient": side})
    features = encode_to_bottleneck(ctx.model, batch.images).detach().requires_grad_(True)
    strategy.extra_losses(ctx, batch, None, features)["cra"].backward()
    rows = {"buffer": batch.from_buffer, "current": ~batch.from_buffer}
    assert all(features.grad[rows[name]].abs().sum() > 0 for name in moved)
    assert all(features.grad[rows[name]].abs().sum() == 0 for name in fixed)


@pytest.mark.parametrize(("reach", "earlier_blocks_move"), [("encoder", True), ("bottleneck", False)])
def test_cra_reach_chooses_how_deep_the_gradient_goes(reach, earlier_blocks_move):
    ctx, strategy, batch = cra_stage_and_batch(**{"continual.cra_reach": reach})
    tap = BottleneckTap(ctx.model)
    ctx.model(batch.images)
    strategy.extra_losses(ctx, batch, None, tap.features)["cra"].backward()
    strategy.after_stage(ctx)
    gradient = {name: sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)
                for name, module in (("input", ctx.model.input_block), ("bottleneck", ctx.model.bottleneck))}
    assert gradient["bottleneck"] > 0
    assert (gradient["input"] > 0) is earlier_blocks_move
    assert list(ctx.model.bottleneck._forward_hooks) == [tap._handle.id]


def test_gradient_balance_caps_the_term_at_a_multiple_of_the_rest():
    balance = GradientBalance(0.5)
    factors = []
    for _ in range(3):
        shared = torch.ones(4, requires_grad=True) * 1.0
        rest = (shared * torch.tensor([1.0, 0.0, 0.0, 0.0])).sum()  # ‖g_rest‖ = 1
        term = (balance.branch(shared) * torch.tensor([0.0, 8.0, 0.0, 0.0])).sum()  # ‖g_term‖ = 8
        (rest + balance.factor * term).backward()
        factors.append(balance.factor)
    assert factors == pytest.approx([0.5 / 8] * 3)
    weak = GradientBalance(0.5)
    shared = torch.ones(4, requires_grad=True) * 1.0
    (100 * shared.sum() + weak.branch(shared).sum()).backward()
    assert weak.factor == 1.0
    off = GradientBalance(0.0)
    assert off.branch(shared) is shared


def test_a_balanced_cra_stage_scales_the_term_down():
    _, strategy = run_stage("dakr-cra", steps=6, **{"continual.cra_balance": 0.1})
    assert 0.0 < strategy.cra_balance.factor < 1.0
    with pytest.raises(ConfigError, match="cra_balance"):
        apply_overrides(ExperimentConfig(), {"continual.cra_balance": 0.5, "continual.cra_reach": "bottleneck"})


@pytest.mark.slow
def test_the_mapping_block_is_saved_and_restored_through_adapt(registered_store, monkeypatch):
    adapt(registered_store, "siteA", strategy="dakr", overrides=TINY_OVERRIDES, activate="always")
    parent = adapt(registered_store, "siteB", strategy="dakr", overrides=TINY_OVERRIDES, activate="always")
    saved = {k[len("strategy.mapping."):]: v for k, v in registered_store.load_tensors(parent.id).items() if k.startswith("strategy.mapping.")}
    assert saved
    seen = {}
    DAKR = get_strategy("dakr")
    original = DAKR.before_stage

    def record(self, ctx):
        seen.update({k: v.clone() for k, v in self.mapping.state_dict().items()})
        original(self, ctx)

    monkeypatch.setattr(DAKR, "before_stage", record)
    adapt(registered_store, "siteC", strategy="dakr", overrides=TINY_OVERRIDES)
    assert seen.keys() == saved.keys() and all(torch.equal(seen[k].cpu(), saved[k]) for k in saved)
