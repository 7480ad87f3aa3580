"""Adapting a store site by site: versions, evaluations, buffer, rollback, prediction geometry."""

import numpy as np
import pytest
import SimpleITK as sitk

from dakr.config import ConfigError
from dakr.data.io import read_image
from dakr.pipeline import adapt, audit_prediction, lineage, predict_image
from dakr.store import StoreError

from synthetic import TINY_OVERRIDES


def test_adapt_chain_records_versions_rows_and_buffer(registered_store):
    store = registered_store
    base = adapt(store, "siteA", strategy="dakr", overrides=TINY_OVERRIDES)
    assert base.parent is None and base.active
    # The base model is evaluated on every registered site (zero-shot reference for FWT).
    assert all(store.site_dice(base.id, s.name) is not None for s in store.sites())
    second = adapt(store, "siteB", strategy="dakr", overrides=TINY_OVERRIDES, activate="always")
    assert second.parent == base.id and store.active_version().id == second.id
    assert [v.id for v in lineage(store, second)] == [base.id, second.id]
    for version in (base, second):
        for site in ("siteA", "siteB"):
            dice = store.site_dice(version.id, site)
            assert 0.0 <= dice <= 1.0
    buffer = store.load_buffer(second.id)
    sites, counts = np.unique(buffer["site"], return_counts=True)
    assert sites.tolist() == ["siteA", "siteB"] and counts.tolist() == [4, 4], "budget 8 shared equally"
    assert buffer["image"].shape[1:] == (1, 32, 32)
    tensors = store.load_tensors(second.id)
    assert any(k.startswith("strategy.mapping.") for k in tensors), "the mapping block is saved with the model"


def test_network_settings_are_fixed_after_the_base_model(registered_store):
    adapt(registered_store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    with pytest.raises(ConfigError, match="net.filters cannot change"):
        adapt(registered_store, "siteB", strategy="finetune", overrides={**TINY_OVERRIDES, "net.filters": [8, 16, 32]})


def test_prediction_keeps_the_image_geometry_and_rollback(registered_store, synthetic_sites, tmp_path):
    store = registered_store
    first = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    second = adapt(store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES)
    image_path = next((synthetic_sites["siteC"] / "imagesTr").iterdir())
    image = read_image(image_path)
    prediction = predict_image(store, image)
    assert prediction.GetSize() == image.GetSize()
    assert prediction.GetSpacing() == pytest.approx(image.GetSpacing())
    assert prediction.GetOrigin() == pytest.approx(image.GetOrigin())
    assert prediction.GetDirection() == pytest.approx(image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2}
    store.activate(first.id)
    assert store.active_version().id == first.id
    third = adapt(store, "siteC", strategy="finetune", overrides=TINY_OVERRIDES)
    assert third.parent == first.id, "adapting after a rollback branches from the rolled-back version"
    assert second.id in [v.id for v in store.versions()], "versions are never deleted"


def test_audit_prediction_is_cached(registered_store):
    store = registered_store
    version = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    case = store.cases("siteB", "audit")[0]
    path = audit_prediction(store, version.id, "siteB", case.case_id)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    assert audit_prediction(store, version.id, "siteB", case.case_id) == path
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(StoreError, match="not stored"):
        audit_prediction(store, version.id, "siteB", "no-such-case")
