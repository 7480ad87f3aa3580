"""Training: the loop with strategy hooks, checkpoint/resume and progress events."""

from dakr.training.strategy import Batch, StageContext, Strategy
from dakr.training.trainer import Trainer, TrainingCancelled, is_main_process, seeded_rng

__all__ = ["Batch", "StageContext", "Strategy", "Trainer", "TrainingCancelled", "is_main_process", "seeded_rng"]
