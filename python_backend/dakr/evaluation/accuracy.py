"""Metrics of a store arranged for reporting: the accuracy matrix R of a lineage, HD95 and per-case Dice.

Dice values are fractions in [0, 1]; missing values are NaN in arrays and ``None`` in mappings.
Only audit cases count, as in :meth:`dakr.store.Store.dice_matrix`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dakr.evaluation.continual_metrics import summarize
from dakr.pipeline import lineage
from dakr.store import Store, VersionInfo
from dakr.store.aggregate import foreground_dice, mean_skipping_nan


@dataclass(frozen=True)
class AccuracyMatrix:
    """R of one lineage: stage i is its i-th version, site j is the site stage j was trained on."""

    stages: list[VersionInfo]
    #: ``(T, T)`` Dice, ``r[i, j]`` = Dice of stage ``i`` on site ``j``; NaN where not evaluated.
    r: np.ndarray

    @property
    def sites(self) -> list[str]:
        """The site of each stage, i.e. the column labels of R."""
        return [stage.site for stage in self.stages]

    @property
    def reference(self) -> np.ndarray:
        """FWT reference b: ``b[j]`` = Dice of the stage-1 model on site j (METHOD.md), i.e. ``r[0]``."""
        return self.r[0].copy()

    def summary(self) -> dict[str, float]:
        """ACC, BWT, forgetting and FWT (keys ``acc``, ``bwt``, ``forgetting``, ``fwt``); NaN when undefined."""
        return summarize(self.r, self.reference)


def accuracy_matrix(store: Store, version: VersionInfo) -> AccuracyMatrix:
    """The accuracy matrix R of the lineage from the base model to ``version``."""
    stages = lineage(store, version)
    r = np.array(
        [[_nan_if_none(store.site_dice(stage.id, column.site)) for column in stages] for stage in stages],
        dtype=float,
    )
    return AccuracyMatrix(stages, r)


def as_array(values: list[list[float | None]], n_rows: int, n_columns: int) -> np.ndarray:
    """A store matrix (``None`` where missing) as a float array with NaN, keeping its shape when empty."""
    return np.array([[_nan_if_none(value) for value in row] for row in values], dtype=float).reshape(
        n_rows, n_columns
    )


def class_hd95_matrix(store: Store, version_ids: list[int], site_names: list[str]) -> dict[str, np.ndarray]:
    """Per foreground label name, mean HD95 (mm) over audit cases as a ``(versions, sites)`` array.

    NaN cases (class absent from prediction and truth) are skipped; ``inf`` (class missed or
    hallucinated) is kept, so a failure shows as ``inf``; NaN where nothing was evaluated.
    """
    audit_cases = {site: {case.case_id for case in store.cases(site, "audit")} for site in site_names}
    values: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for record in store.evaluations():
        if record.case_id in audit_cases.get(record.site, set()):
            for name, value in record.hd95.items():
                values[(name, record.version, record.site)].append(value)
    return {
        name: np.array(
            [[_nan_if_none(mean_skipping_nan(values.get((name, v, s), []))) for s in site_names] for v in version_ids],
            dtype=float,
        ).reshape(len(version_ids), len(site_names))
        for name in foreground_names(store)
    }


def case_dice(store: Store, version: int, site: str) -> dict[str, float | None]:
    """Case id -> mean foreground Dice of ``version`` on that case of ``site`` (``None`` if all NaN)."""
    background = {name for name, value in (store.label_names or {}).items() if value == 0}
    return {
        record.case_id: mean_skipping_nan(foreground_dice(record.dice, background).values())
        for record in store.evaluations(version, site)
    }


def foreground_names(store: Store) -> list[str]:
    """The store's foreground label names in label-value order."""
    labels = store.label_names or {}
    return [name for name, value in sorted(labels.items(), key=lambda item: item[1]) if value != 0]


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)
