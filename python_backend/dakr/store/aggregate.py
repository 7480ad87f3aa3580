"""Aggregation of per-case evaluations into per-site Dice figures."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from dakr.store.records import EvaluationRecord


def mean_skipping_nan(values: Iterable[float]) -> float | None:
    """Mean of the non-NaN values; ``None`` when there are none."""
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else None


def foreground_dice(dice: dict[str, float], background: set[str]) -> dict[str, float]:
    """The per-class Dice values without the background classes."""
    return {name: value for name, value in dice.items() if name not in background}


def site_means(
    records: Iterable[EvaluationRecord], background: set[str]
) -> dict[tuple[int, str], float]:
    """(version, site) -> mean over cases of each case's mean foreground Dice.

    NaN classes (absent in prediction and label) are skipped within a case; a case without any
    valid class is skipped; a (version, site) pair without any valid case is left out.
    """
    case_means: dict[tuple[int, str], list[float]] = defaultdict(list)
    for record in records:
        case_mean = mean_skipping_nan(foreground_dice(record.dice, background).values())
        if case_mean is not None:
            case_means[(record.version, record.site)].append(case_mean)
    return {key: sum(values) / len(values) for key, values in case_means.items()}


def class_site_means(
    records: Iterable[EvaluationRecord], background: set[str]
) -> dict[tuple[str, int, str], float]:
    """(label name, version, site) -> mean over cases of that class's Dice, NaN skipped."""
    values: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for record in records:
        for name, value in foreground_dice(record.dice, background).items():
            values[(name, record.version, record.site)].append(value)
    means = {key: mean_skipping_nan(class_values) for key, class_values in values.items()}
    return {key: mean for key, mean in means.items() if mean is not None}
