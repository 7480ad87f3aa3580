"""The trainer loop: strategy hooks, progress events, checkpoints and exact resume."""

import numpy as np
import pytest
import torch

from dakr.config import apply_overrides, ExperimentConfig
from dakr.nets import build_network
from dakr.training import StageContext, Strategy, Trainer, TrainingCancelled


class ThresholdSampler:
    """Random images whose label is 1 where the intensity is positive (learnable)."""

    def __init__(self, size=(16, 16)):
        self.size = size

    def sample(self, batch_size, rng):
        images = rng.normal(size=(batch_size, 1, *self.size)).astype(np.float32)
        return images, (images > 0).astype(np.int64)


def tiny_config(**overrides):
    base = {
        "net.filters": [4, 8, 16],
        "net.patch_size": [16, 16],
        "train.epochs": 2,
        "train.steps_per_epoch": 3,
        "train.batch_size": 2,
        "train.checkpoint_every": 2,
        "train.lr": 0.01,
    }
    base.update(overrides)
    return apply_overrides(ExperimentConfig(), base)


def make_context(config, seed=0):
    torch.manual_seed(seed)
    return StageContext(
        config=config,
        model=build_network(config.net, num_classes=2),
        sampler=ThresholdSampler(),
        num_classes=2,
        device=torch.device("cpu"),
        rng=np.random.default_rng(seed),
        stage=1,
        site="s1",
    )


class RecordingStrategy(Strategy):
    name = "recording"

    def __init__(self, config):
        super().__init__(config)
        self.calls = []
        self.head = torch.nn.Linear(16, 1)

    def trainable_modules(self):
        return {"head": self.head}

    def before_stage(self, ctx):
        self.calls.append("before_stage")

    def adapt_batch(self, ctx, batch):
        self.calls.append("adapt_batch")
        return batch

    def extra_losses(self, ctx, batch, logits, features):
        self.calls.append("extra_losses")
        assert features.shape == (batch.size, 16, 4, 4)
        return {"extra": self.head(features.mean(dim=(2, 3))).pow(2).mean()}

    def after_stage(self, ctx):
        self.calls.append("after_stage")


def test_hooks_progress_and_extra_module_training():
    config = tiny_config()
    ctx = make_context(config)
    strategy = RecordingStrategy(config)
    head_before = strategy.head.weight.detach().clone()
    events = []
    Trainer(ctx, strategy, progress=events.append).fit()
    assert strategy.calls[0] == "before_stage" and strategy.calls[-1] == "after_stage"
    assert strategy.calls.count("adapt_batch") == strategy.calls.count("extra_losses") == 6
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1].epoch == 2 and events[-1].eta_s == 0
    assert set(events[0].losses) == {"seg", "extra"}
    assert not torch.equal(head_before, strategy.head.weight), "the strategy's module must be optimised too"
    assert set(strategy.state_tensors()) == {"head.weight", "head.bias"}


def test_training_reduces_the_loss():
    config = tiny_config(**{"train.epochs": 4, "train.steps_per_epoch": 10})
    events = []
    Trainer(make_context(config), Strategy(config), progress=events.append).fit()
    assert events[-1].losses["seg"] < events[0].losses["seg"] * 0.8


def test_resume_continues_the_schedule_exactly(tmp_path):
    config = tiny_config()
    reference = Trainer(make_context(config), Strategy(config))
    lrs = []
    reference.progress = lambda e: lrs.append(reference.scheduler.get_last_lr()[0])
    reference.fit()

    stops = iter([False] * 4 + [True])
    interrupted = Trainer(make_context(config), Strategy(config), checkpoint_dir=tmp_path, should_stop=lambda: next(stops))
    with pytest.raises(TrainingCancelled, match="stopped at step 4/6"):
        interrupted.fit()

    resumed = Trainer(make_context(config, seed=123), Strategy(config), checkpoint_dir=tmp_path)
    assert resumed.load_checkpoint()
    assert resumed.step == 4
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(lrs[3])
    resumed.fit(resume=True)
    assert resumed.step == 6
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(lrs[-1])
    for a, b in zip(reference.ctx.model.parameters(), resumed.ctx.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), "a resumed run must end where the uninterrupted run ends"
