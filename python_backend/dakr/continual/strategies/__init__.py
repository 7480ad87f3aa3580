"""Continual-learning strategies, one file each, selected by name."""

from __future__ import annotations

from dakr.continual.strategies.dakr import DAKR, DAKRCNAOnly, DAKRCRAOnly
from dakr.continual.strategies.distill import Distill
from dakr.continual.strategies.ewc import EWC
from dakr.continual.strategies.finetune import Finetune
from dakr.continual.strategies.joint import Joint
from dakr.continual.strategies.lwf import LwF
from dakr.continual.strategies.replay import Replay
from dakr.training.strategy import Strategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (DAKR, Replay, Finetune, EWC, LwF, Joint, Distill, DAKRCNAOnly, DAKRCRAOnly)
}
#: The six strategies every benchmark compares.
MAIN_STRATEGIES = ("finetune", "replay", "ewc", "lwf", "joint", "dakr")


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered under ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}. Choose one of: {', '.join(STRATEGIES)}") from None
