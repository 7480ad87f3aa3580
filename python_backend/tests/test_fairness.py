"""Fair comparisons: equal samples per step, buffer batches without replacement, per-sample EWC Fisher."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from synthetic import TINY_OVERRIDES

from dakr.config import ExperimentConfig, apply_overrides
from dakr.continual.buffer import ReplayBuffer
from dakr.continual.strategies import STRATEGIES
from dakr.continual.strategies.ewc import per_sample_squared_gradients
from dakr.data.preprocessing import PreprocessedCase
from dakr.data.sampling import PatchSampler
from dakr.nets import build_network
from dakr.training import Batch, StageContext

CONFIG = apply_overrides(ExperimentConfig(), TINY_OVERRIDES)


def _labelled(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.normal(size=(count, 1, 32, 32)).astype(np.float32)
    labels = np.zeros((count, 1, 32, 32), np.uint8)
    labels[:, :, 8:24, 8:24] = 2
    labels[:, :, 12:20, 12:20] = 1
    return images, labels


def _context(stage: int) -> StageContext:
    rng = np.random.default_rng(0)
    volume, label = _labelled(rng, 6)
    sampler = PatchSampler([PreprocessedCase("c0", volume[:, 0], label[:, 0].astype(np.int64), None)], (32, 32), 2, 0.5)
    model = build_network(CONFIG.net, num_classes=3)
    images, labels = _labelled(rng, 12)
    return StageContext(
        config=CONFIG, model=model, sampler=sampler, num_classes=3, device=torch.device("cpu"), rng=rng, stage=stage,
        site="s2", previous_model=copy.deepcopy(model).eval() if stage > 1 else None,
        buffer=ReplayBuffer(images, labels, np.array(["s1"] * 12)) if stage > 1 else None,
    )


@pytest.mark.parametrize("stage", [1, 2])
def test_every_strategy_sees_the_same_number_of_samples_per_step(stage: int) -> None:
    sizes = {}
    for name, cls in STRATEGIES.items():
        ctx = _context(stage)
        images, labels = ctx.sampler.sample(CONFIG.train.batch_size, ctx.rng)
        batch = Batch(torch.from_numpy(images), torch.from_numpy(labels), torch.zeros(len(images), dtype=torch.bool))
        sizes[name] = cls(CONFIG).adapt_batch(ctx, batch).size
    extra = CONFIG.continual.buffer_batch_size if stage > 1 else 0
    assert sizes == {name: CONFIG.train.batch_size + extra for name in STRATEGIES}


def test_buffer_batches_are_drawn_without_replacement() -> None:
    images, labels = _labelled(np.random.default_rng(1), 8)
    buffer = ReplayBuffer(images, labels, np.array(["s1"] * 8))
    rng = np.random.default_rng(2)
    for _ in range(20):
        index = buffer.sample_indices(8, rng)
        assert sorted(index.tolist()) == list(range(8))
        assert len(set(buffer.sample_indices(5, rng).tolist())) == 5
    small = buffer.sample_indices(12, rng)  # larger than the buffer: every sample once before any repeats
    assert sorted(small[:8].tolist()) == list(range(8)) and len(set(small[8:].tolist())) == 4


def test_per_sample_fisher_equals_a_loop_over_samples() -> None:
    torch.manual_seed(0)
    net = build_network(CONFIG.net, num_classes=3).eval()
    images = torch.randn(3, 1, 32, 32)
    labels = torch.randint(0, 3, (3, 1, 32, 32))
    fast = per_sample_squared_gradients(net, images, labels)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    looped = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    for i in range(3):
        net.zero_grad(set_to_none=True)
        loss_fn(net(images[i : i + 1]), labels[i : i + 1]).backward()
        for k, p in net.named_parameters():
            if p.grad is not None:
                looped[k] += p.grad.pow(2)
    assert fast.keys() == looped.keys()
    for k in looped:
        torch.testing.assert_close(fast[k], looped[k], rtol=1e-4, atol=1e-9)
    net.zero_grad(set_to_none=True)
    loss_fn(net(images), labels).backward()  # the functional pass left the network itself trainable
    first = next(iter(looped))
    assert net.get_parameter(first).grad is not None
    assert not torch.allclose(net.get_parameter(first).grad.pow(2) * 3, looped[first])  # not the batch gradient squared
