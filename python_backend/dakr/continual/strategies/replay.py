"""``replay``: experience replay from the bounded buffer, no alignment."""

import numpy as np
import torch

from dakr.training.strategy import Batch, StageContext, Strategy


class Replay(Strategy):
    """Every step appends ``continual.buffer_batch_size`` buffer samples to the current batch."""

    name = "replay"
    description = "experience replay with the bounded buffer"

    def adapt_batch(self, ctx: StageContext, batch: Batch) -> Batch:
        if ctx.buffer is None or len(ctx.buffer) == 0 or self.config.continual.buffer_batch_size == 0:
            return batch
        index = ctx.buffer.sample_indices(self.config.continual.buffer_batch_size, ctx.rng)
        return Batch(
            torch.cat([batch.images, torch.from_numpy(ctx.buffer.images[index])]),
            torch.cat([batch.labels, torch.from_numpy(ctx.buffer.labels[index].astype(np.int64))]),
            torch.cat([batch.from_buffer, torch.ones(len(index), dtype=torch.bool)]),
            torch.from_numpy(index),
        )
