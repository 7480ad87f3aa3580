"""Continual-learning strategies, one file each, selected by name."""

from __future__ import annotations

from dakr.continual.strategies.dakr import DAKR, DAKRCNAOnly, DAKRCRAOnly
from dakr.continual.strategies.distill import Distill
from dakr.continual.strategies.ewc import EWC
from dakr.continual.strategies.finetune import Finetune
from dakr.continual.strategies.joint import Joint
from dakr.continual.strategies.lwf import LwF
from dakr.continual.strategies.replay import Replay
from dakr.continual.strategy_names import MAIN_STRATEGIES, STRATEGY_NAMES
from dakr.training.strategy import Strategy

_CLASSES = {cls.name: cls for cls in (DAKR, Replay, Finetune, EWC, LwF, Joint, Distill, DAKRCNAOnly, DAKRCRAOnly)}
STRATEGIES: dict[str, type[Strategy]] = {name: _CLASSES[name] for name in STRATEGY_NAMES}
__all__ = ["MAIN_STRATEGIES", "STRATEGIES", "STRATEGY_NAMES", "get_strategy"]


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered under ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}. Choose one of: {', '.join(STRATEGIES)}") from None
