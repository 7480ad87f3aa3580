"""Equal samples per step: strategies without replay top their batch up from their own data."""

import torch

from dakr.training.strategy import Batch, StageContext, Strategy


class OwnDataTopUp(Strategy):
    """Base of the strategies that replay nothing (finetune, EWC, LwF, joint).

    Whenever replay would append ``continual.buffer_batch_size`` buffer samples (from stage 2
    on), these strategies append as many more samples of their own training data instead, so
    every strategy sees the same number of samples per optimiser step.
    """

    def adapt_batch(self, ctx: StageContext, batch: Batch) -> Batch:
        extra = self.config.continual.buffer_batch_size
        if ctx.buffer is None or len(ctx.buffer) == 0 or extra == 0:
            return batch
        images, labels = ctx.sampler.sample(extra, ctx.rng)
        return Batch(
            torch.cat([batch.images, torch.from_numpy(images)]),
            torch.cat([batch.labels, torch.from_numpy(labels)]),
            torch.cat([batch.from_buffer, torch.zeros(extra, dtype=torch.bool)]),
        )
