"""The training loop: one stage of optimisation with strategy hooks, checkpoints and progress.

The loop is step based (``epochs × steps_per_epoch`` optimiser steps). Each step samples a batch
from the stage's training data, lets the strategy adapt it (replay), runs one forward pass whose
bottleneck features are captured by a hook, adds the strategy's extra losses to Dice + CE, and
steps the optimiser and the learning-rate schedule. A checkpoint with the full state (model,
strategy modules, optimiser, scheduler, step, RNG states, the run it belongs to and whether
training finished) is written before the first step, every ``checkpoint_every`` steps, on a stop
and after the last step, so that a resumed run continues exactly where the schedule was.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss
from torch import nn

from dakr.nets.factory import BottleneckTap, unwrap
from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.training.checkpoint import checkpoint_file, read_checkpoint, write_checkpoint
from dakr.training.strategy import Batch, StageContext, Strategy


class TrainingCancelled(RuntimeError):
    """Raised when a stop was requested; the latest state has been checkpointed."""


def is_main_process() -> bool:
    """True on rank 0 of a distributed run and in every single-process run."""
    return not dist.is_initialized() or dist.get_rank() == 0


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module, from_buffer: torch.Tensor) -> torch.Tensor:
    """L_seg(current part) + L_seg(buffer part): Dice + CE on each part of the batch (METHOD.md)."""
    total = logits.new_zeros(())
    for part in (~from_buffer, from_buffer):
        if bool(part.any()):
            total = total + loss_fn(logits[part], labels[part])
    return total


def learning_rate_lambda(schedule: str, total_steps: int) -> Callable[[int], float]:
    """Multiplicative LR factor per step for ``"cosine"``, ``"poly"`` or ``"constant"``."""
    if schedule == "cosine":
        return lambda step: 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "poly":
        return lambda step: max(1.0 - step / total_steps, 0.0) ** 0.9
    return lambda step: 1.0


class Trainer:
    """Trains ``ctx.model`` for one stage with ``strategy``.

    Args:
        ctx: the stage context (model, data sampler, buffer, previous model, config).
        strategy: the continual-learning strategy whose hooks are called.
        progress: receives a :class:`ProgressEvent` after every step.
        checkpoint_dir: where resumable checkpoints are written (``None``: no checkpoints).
        should_stop: polled every step; when it returns True the trainer checkpoints and raises
            :class:`TrainingCancelled`.
        run: JSON-compatible description of the run, recorded in every checkpoint.
    """

    def __init__(
        self,
        ctx: StageContext,
        strategy: Strategy,
        *,
        progress: ProgressCallback = null_progress,
        checkpoint_dir: str | Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        run: Mapping[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.strategy = strategy
        self.progress = progress
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.should_stop = should_stop or (lambda: False)
        self.run = json.dumps(dict(run or {}))
        train = ctx.config.train
        self.total_steps = train.total_steps
        self.step = 0
        self.extra_modules = nn.ModuleDict(strategy.trainable_modules()).to(ctx.device)
        parameters = list(ctx.model.parameters()) + list(self.extra_modules.parameters())
        optimizer_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(parameters, lr=train.lr, weight_decay=train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, learning_rate_lambda(train.scheduler, self.total_steps))
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.amp_dtype = _amp_dtype(ctx.device, train.amp)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return checkpoint_file(self.checkpoint_dir) if self.checkpoint_dir else None

    def save_checkpoint(self) -> None:
        """Atomically write the training state, the run and whether training finished (fsynced)."""
        if self.checkpoint_path is None or not is_main_process():
            return
        state = {
            "run": self.run,
            "finished": self.step >= self.total_steps,
            "step": self.step,
            "model": unwrap(self.ctx.model).state_dict(),
            "extra_modules": self.extra_modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "numpy_rng": self.ctx.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> bool:
        """Restore the latest checkpoint if there is one; returns whether one was loaded."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        state = read_checkpoint(self.checkpoint_path, self.ctx.device)
        unwrap(self.ctx.model).load_state_dict(state["model"])
        self.extra_modules.load_state_dict(state["extra_modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ctx.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = int(state["step"])
        return True

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> nn.Module:
        """Run the stage to its last step (continuing from a checkpoint when ``resume``)."""
        ctx, train = self.ctx, self.ctx.config.train
        if not (resume and self.load_checkpoint()):
            self.save_checkpoint()
        self.strategy.before_stage(ctx)
        ctx.model.train()
        self.extra_modules.train()
        tap = BottleneckTap(ctx.model)
        running: dict[str, float] = {}
        started, first_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                if self.should_stop():
                    self.save_checkpoint()
                    raise TrainingCancelled(f"stopped at step {self.step}/{self.total_steps}; resume to continue")
                losses, batch_size = self._train_step(tap)
                self.step += 1
                epoch_step = (self.step - 1) % train.steps_per_epoch
                running = losses if epoch_step == 0 else {
                    k: running.get(k, v) + (v - running.get(k, v)) / (epoch_step + 1) for k, v in losses.items()
                }
                if train.checkpoint_every and self.step % train.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                self._report(running, batch_size, started, first_step)
        finally:
            tap.remove()
        self.save_checkpoint()
        self.strategy.after_stage(ctx)
        diagnostics = self.strategy.stage_diagnostics()
        if diagnostics and is_main_process():
            self.progress(ProgressEvent(stage="diagnostics", step=self.step, total=self.total_steps,
                                        diagnostics=diagnostics, message=f"site {ctx.site}"))
        return ctx.model

    def _train_step(self, tap: BottleneckTap) -> tuple[dict[str, float], int]:
        ctx = self.ctx
        ctx.step = self.step
        images, labels = ctx.sampler.sample(ctx.config.train.batch_size, ctx.rng)
        batch = Batch(torch.from_numpy(images), torch.from_numpy(labels), torch.zeros(len(images), dtype=torch.bool))
        batch = self.strategy.adapt_batch(ctx, batch).to(ctx.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = ctx.model(batch.images)
            terms = {"seg": segmentation_loss(logits, batch.labels, self.loss_fn, batch.from_buffer)}
            terms.update(self.strategy.extra_losses(ctx, batch, logits, tap.features))
        loss = sum(terms.values())
        loss.backward()
        _average_extra_gradients(self.extra_modules)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in terms.items()}, batch.size

    def _report(self, losses: dict[str, float], batch_size: int, started: float, first_step: int) -> None:
        if not is_main_process():
            return
        train = self.ctx.config.train
        elapsed = time.perf_counter() - started
        done = self.step - first_step
        per_step = elapsed / max(done, 1)
        self.progress(
            ProgressEvent(
                stage="train",
                step=self.step,
                total=self.total_steps,
                epoch=(self.step - 1) // train.steps_per_epoch + 1,
                epochs=train.epochs,
                losses=dict(losses),
                throughput=batch_size / per_step if per_step > 0 else 0.0,
                eta_s=per_step * (self.total_steps - self.step),
                message=f"site {self.ctx.site}, lr {self.scheduler.get_last_lr()[0]:.2e}",
            )
        )


def _average_extra_gradients(modules: nn.Module) -> None:
    """In a distributed run, average the gradients of strategy modules that DDP does not manage."""
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    for parameter in modules.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast on CUDA devices that support it; full precision elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seeded_rng(seed: int, stage: int, purpose: int = 0) -> np.random.Generator:
    """The RNG of a stage for one ``purpose`` (0: training batches, 1: buffer selection), distinct per rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return np.random.default_rng([seed, stage, purpose, rank])
