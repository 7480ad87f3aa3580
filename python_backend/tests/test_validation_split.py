"""The validation split: carved from training cases only, recorded, deterministic, left out of training."""

from __future__ import annotations

import pytest
from synthetic import TINY_OVERRIDES

from dakr.config import ExperimentConfig, apply_overrides
from dakr.data.site import discover_site
from dakr.pipeline import training_cases
from dakr.store import Store, StoreError
from dakr.store.validation_split import carve_validation, validation_case_ids, validation_cases


def test_validation_is_disjoint_from_audit_and_deterministic(tmp_path, synthetic_sites) -> None:
    carved = []
    for index in range(2):
        store = Store.init(tmp_path / f"store{index}")
        store.add_site("siteA", discover_site(synthetic_sites["siteA"]), audit_fraction=0.25)
        carved.append(carve_validation(store, "siteA", 0.34, seed=5))
        audit = {c.case_id for c in store.cases("siteA", "audit")}
        assert set(carved[-1]) and not set(carved[-1]) & audit
        assert {c.case_id for c in validation_cases(store, "siteA")} == set(carved[-1]) == validation_case_ids(store, "siteA")
        assert carve_validation(store, "siteA", 0.34, seed=5) == carved[-1]  # recorded, not drawn again
        with pytest.raises(StoreError, match="already has a validation split"):
            carve_validation(store, "siteA", 0.34, seed=6)
    assert carved[0] == carved[1]


def test_training_leaves_validation_cases_out(registered_store) -> None:
    config = apply_overrides(ExperimentConfig(), TINY_OVERRIDES)
    values = sorted(registered_store.label_names.values())
    before = {case.case_id for case in training_cases(registered_store, ["siteB"], config, values)}
    held_out = set(carve_validation(registered_store, "siteB", 0.34, seed=0))
    after = {case.case_id for case in training_cases(registered_store, ["siteB"], config, values)}
    assert held_out and after == before - held_out
