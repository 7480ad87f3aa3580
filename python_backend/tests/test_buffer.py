"""The replay buffer: budgets in samples and bytes, per-site balance, seeded selection, herding."""

import numpy as np

from dakr.config import ContinualConfig, ExperimentConfig, NetConfig
from dakr.continual.buffer import ReplayBuffer, capacity, herding_selection, update_buffer
from dakr.data.preprocessing import PreprocessedCase, preprocess_case
from dakr.data.sampling import PatchSampler
from dakr.nets import build_network
from dakr.pipeline import adapt

from synthetic import TINY_OVERRIDES


def _sampler(value: float, cases: int = 2) -> PatchSampler:
    label = np.zeros((4, 16, 16), np.uint8)
    label[:, 4:12, 4:12] = 1
    items = [PreprocessedCase(f"c{i}", np.full((4, 16, 16), value + i, np.float32), label, None) for i in range(cases)]
    return PatchSampler(items, (16, 16), 2, 0.5)


def _fill(sites, config, seed=0):
    buffer = ReplayBuffer.empty((16, 16))
    for index, site in enumerate(sites):
        buffer = update_buffer(buffer, site, _sampler(10.0 * index), config, np.random.default_rng([seed, index]))
    return buffer


def test_capacity_obeys_both_budgets():
    per_sample = 16 * 16 * 5  # float32 image + uint8 label
    assert capacity(ContinualConfig(buffer_samples=100, buffer_megabytes=1.0), (16, 16)) == 100
    assert capacity(ContinualConfig(buffer_samples=100, buffer_megabytes=per_sample * 7 / 1e6), (16, 16)) == 7
    assert capacity(ContinualConfig(buffer_samples=0), (16, 16)) == 0


def test_balanced_per_site_and_bounded():
    config = ContinualConfig(buffer_samples=10)
    buffer = _fill(["a", "b", "c"], config)
    assert len(buffer) == 10
    counts = buffer.site_counts()
    assert set(counts) == {"a", "b", "c"} and max(counts.values()) - min(counts.values()) <= 1
    # Samples keep their site: site b's cases have intensities 10 and 11.
    assert set(np.unique(buffer.images[buffer.sites == "b"])) <= {10.0, 11.0}
    assert buffer.nbytes == buffer.images.nbytes + buffer.labels.nbytes


def test_seeded_selection_is_reproducible():
    config = ContinualConfig(buffer_samples=8)
    first, again, other = _fill(["a", "b"], config, 0), _fill(["a", "b"], config, 0), _fill(["a", "b"], config, 1)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert not (np.array_equal(first.images, other.images) and np.array_equal(first.labels, other.labels))


def test_round_trip_through_arrays_and_sampling():
    buffer = _fill(["a", "b"], ContinualConfig(buffer_samples=6))
    restored = ReplayBuffer.from_arrays(buffer.to_arrays())
    assert np.array_equal(restored.images, buffer.images) and restored.sites.tolist() == buffer.sites.tolist()
    images, labels = restored.sample(5, np.random.default_rng(0))
    assert images.shape == (5, 1, 16, 16) and labels.dtype == np.int64


def test_herding_tracks_the_feature_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8))
    chosen = herding_selection(features, 10)
    assert len(set(chosen.tolist())) == 10
    herded = np.linalg.norm(features[chosen].mean(0) - features.mean(0))
    random = np.mean([np.linalg.norm(features[rng.choice(200, 10, replace=False)].mean(0) - features.mean(0)) for _ in range(50)])
    assert herded < 0.5 * random


def test_herding_selection_uses_the_model():
    config = ContinualConfig(buffer_samples=4, buffer_selection="herding")
    model = build_network(NetConfig(filters=(4, 8, 16), patch_size=(16, 16)), num_classes=2)
    buffer = update_buffer(ReplayBuffer.empty((16, 16)), "a", _sampler(0.0), config, np.random.default_rng(0), model)
    assert len(buffer) == 4 and buffer.site_counts() == {"a": 4}


def test_the_store_buffer_holds_training_slices_only(registered_store):
    store = registered_store
    version = adapt(store, "siteA", strategy="replay", overrides={**TINY_OVERRIDES, "continual.buffer_samples": 32})
    config = ExperimentConfig.from_dict(version.config)
    buffer = store.load_buffer(version.id)
    assert len(buffer["image"]) == 32 and set(buffer["site"].tolist()) == {"siteA"}

    def slices(split):
        cases = [preprocess_case(c.image_path, None, config.preprocess) for c in store.cases("siteA", split)]
        return [s.tobytes() for case in cases for s in case.image]

    training, audit = set(slices("train")), set(slices("audit"))
    buffered = [sample.tobytes() for sample in buffer["image"][:, 0]]
    # 32x32 slices and 32x32 patches: every buffered sample is a whole slice of a training case.
    assert all(sample in training for sample in buffered)
    assert not any(sample in audit for sample in buffered)
