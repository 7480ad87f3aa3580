"""Tests of the embedded store (dakr.store) on tiny synthetic sites."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import dakr.store.store as store_module
from dakr.data.errors import SiteValidationError
from dakr.data.site import CaseFiles, SiteSpec
from dakr.progress import ProgressEvent
from dakr.store import EvaluationRecord, Store, StoreError

LABELS = {"background": 0, "A": 1, "B": 2}
SPACING = (0.7, 0.8, 2.0)
ORIGIN = (-10.0, 5.0, 3.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def make_site(
    root: Path,
    n_cases: int = 4,
    label_names: dict[str, int] | None = LABELS,
    suffix: str = ".nrrd",
    seed: int = 0,
) -> SiteSpec:
    """A site of ``n_cases`` 6x12x12 volumes whose label maps contain labels 1 and 2."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    cases = []
    for index in range(n_cases):
        case_id = f"case{index:02d}"
        image = rng.normal(100.0, 20.0, size=(6, 12, 12)).astype(np.float32)
        label = np.zeros((6, 12, 12), dtype=np.uint8)
        label[1:3, 2 : 4 + index, 2:6] = 1
        label[3:5, 6:10, 5 : 7 + index] = 2
        files = CaseFiles(case_id, root / f"{case_id}_0000{suffix}", root / f"{case_id}{suffix}")
        sitk.WriteImage(_volume(image), str(files.image))
        sitk.WriteImage(_volume(label), str(files.label))
        cases.append(files)
    return SiteSpec(cases=cases, label_names=label_names)


def tensors(value: float) -> dict[str, torch.Tensor]:
    """A small state dict including a non-contiguous tensor and an integer buffer."""
    return {
        "conv.weight": torch.full((2, 3), value).t(),
        "conv.bias": torch.arange(3, dtype=torch.float16) + value,
        "bn.num_batches_tracked": torch.tensor(int(value), dtype=torch.int64),
    }


def buffer(sites: list[str]) -> dict[str, np.ndarray]:
    """A replay buffer with one sample per entry of ``sites``, plus a per-buffer array."""
    n = len(sites)
    return {
        "site": np.array(sites),
        "image": np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2),
        "label": np.arange(n, dtype=np.uint8),
        "class_values": np.array([1, 2], dtype=np.uint8),
    }


def folder_names(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []


def add_version(store: Store, site: str, value: float, **kwargs) -> int:
    arguments = dict(parent=None, site=site, strategy="dakr", config={"lr": value}, seed=0, buffer=None)
    arguments.update(kwargs)
    return store.add_version(tensors=tensors(value), **arguments).id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.init(tmp_path / "store")


@pytest.fixture
def store_with_site(store: Store, tmp_path: Path) -> Store:
    store.add_site("siteA", make_site(tmp_path / "raw_a"))
    return store


# ---------------------------------------------------------------------- init / open
def test_init_then_open_and_init_again_keep_the_store(store_with_site: Store) -> None:
    reopened = Store.open(store_with_site.path)
    assert [site.name for site in reopened.sites()] == ["siteA"]
    assert [site.name for site in Store.init(store_with_site.path).sites()] == ["siteA"]
    assert reopened.label_names == LABELS


def test_init_refuses_a_non_empty_folder_and_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "thesis.txt").write_text("keep me")
    with pytest.raises(StoreError, match="non-empty folder that is not a DAKR store"):
        Store.init(folder)
    assert folder_names(folder) == ["thesis.txt"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.init(tmp_path / "a_file")


def test_open_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"is not a DAKR store\. Fix: run `dakr init"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="dakr init"):
        Store.open(tmp_path / "missing")


# ---------------------------------------------------------------------- sites
def test_add_site_copies_every_case_as_nifti_with_the_same_geometry_and_values(
    store: Store, tmp_path: Path
) -> None:
    spec = make_site(tmp_path / "raw", n_cases=3)
    events: list[ProgressEvent] = []
    info = store.add_site("siteA", spec, progress=events.append)

    assert (info.name, info.n_train + info.n_audit, info.purged) == ("siteA", 3, False)
    assert store.label_names == LABELS
    progress = [(event.stage, event.step, event.total) for event in events]
    assert progress == [("register", 1, 3), ("register", 2, 3), ("register", 3, 3)]
    records = store.cases("siteA")
    assert [record.case_id for record in records] == ["case00", "case01", "case02"]
    for record, case in zip(records, spec.cases):
        assert record.image_path == store.path / "sites" / "siteA" / case.case_id / "image.nii.gz"
        for stored_path, original_path in ((record.image_path, case.image), (record.label_path, case.label)):
            stored, original = sitk.ReadImage(str(stored_path)), sitk.ReadImage(str(original_path))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(original))
            np.testing.assert_allclose(stored.GetSpacing(), original.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(stored.GetOrigin(), original.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(stored.GetDirection(), original.GetDirection(), atol=1e-6)


def test_split_is_frozen_deterministic_disjoint_with_at_least_one_audit_case(
    store: Store, tmp_path: Path
) -> None:
    spec = make_site(tmp_path / "raw", n_cases=5)
    splits = {}
    for seed in range(6):
        store.add_site(f"seed{seed}", spec, seed=seed, audit_fraction=0.4)
        splits[seed] = {record.case_id: record.split for record in store.cases(f"seed{seed}")}
    store.add_site("again0", spec, seed=0, audit_fraction=0.4)
    assert {record.case_id: record.split for record in store.cases("again0")} == splits[0]
    assert len({tuple(sorted(split.items())) for split in splits.values()}) > 1

    for seed, split in splits.items():
        audit = {case for case, part in split.items() if part == "audit"}
        train = {case for case, part in split.items() if part == "train"}
        assert len(audit) == 2 and len(train) == 3 and not audit & train
        assert {record.case_id for record in store.cases(f"seed{seed}", "audit")} == audit
        assert {record.case_id for record in store.cases(f"seed{seed}", "train")} == train
        info = store.site(f"seed{seed}")
        assert (info.split_seed, info.audit_fraction, info.n_audit, info.n_train) == (seed, 0.4, 2, 3)
    assert {r.case_id: r.split for r in Store.open(store.path).cases("seed3")} == splits[3]


@pytest.mark.parametrize(("fraction", "n_cases", "n_audit"), [(0.01, 3, 1), (0.99, 3, 2), (0.5, 2, 1)])
def test_split_keeps_one_audit_and_one_training_case(
    store: Store, tmp_path: Path, fraction: float, n_cases: int, n_audit: int
) -> None:
    info = store.add_site("site", make_site(tmp_path / "raw", n_cases=n_cases), audit_fraction=fraction)
    assert (info.n_audit, info.n_train) == (n_audit, n_cases - n_audit)


def test_audit_fraction_outside_zero_one_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="audit_fraction"):
        store.add_site("site", make_site(tmp_path / "raw"), audit_fraction=1.0)
    assert store.sites() == []


def assert_nothing_stored_for(store: Store, name: str, n_sites: int) -> None:
    assert len(store.sites()) == n_sites
    with pytest.raises(StoreError, match=f"unknown site '{name}'"):
        store.cases(name)
    assert name not in folder_names(store.path / "sites")
    assert not [entry for entry in folder_names(store.path / "sites") if entry.startswith(".tmp-")]


def test_site_with_another_label_set_is_rejected_and_nothing_stored(
    store_with_site: Store, tmp_path: Path
) -> None:
    other_labels = {"background": 0, "liver": 1, "spleen": 2}
    with pytest.raises(SiteValidationError, match="differs from the store"):
        store_with_site.add_site("siteB", make_site(tmp_path / "raw_b", label_names=other_labels))
    assert_nothing_stored_for(store_with_site, "siteB", n_sites=1)
    assert store_with_site.label_names == LABELS


def test_invalid_site_is_rejected_with_every_problem_and_nothing_stored(store: Store, tmp_path: Path) -> None:
    spec = make_site(tmp_path / "raw", n_cases=3)
    sitk.WriteImage(_volume(np.zeros((6, 12, 12), dtype=np.uint8)), str(spec.cases[0].label))
    spec.cases[1].label.unlink()
    with pytest.raises(SiteValidationError) as caught:
        store.add_site("bad", spec)
    assert len(caught.value.problems) == 2
    assert_nothing_stored_for(store, "bad", n_sites=0)
    assert store.label_names is None


def test_duplicate_and_unsafe_site_names_are_refused(store_with_site: Store, tmp_path: Path) -> None:
    spec = make_site(tmp_path / "raw_b")
    with pytest.raises(StoreError, match="already registered"):
        store_with_site.add_site("siteA", spec)
    with pytest.raises(ValueError, match="invalid site name"):
        store_with_site.add_site("../escape", spec)
    assert [site.name for site in store_with_site.sites()] == ["siteA"]


def test_unknown_site_error_lists_the_known_sites(store_with_site: Store, tmp_path: Path) -> None:
    store_with_site.add_site("siteB", make_site(tmp_path / "raw_b"))
    with pytest.raises(StoreError, match="unknown site 'siteC'; known sites: siteA, siteB"):
        store_with_site.site("siteC")
    with pytest.raises(StoreError, match="unknown split"):
        store_with_site.cases("siteA", "validation")


# ---------------------------------------------------------------------- versions
def test_add_version_round_trips_tensors_config_and_buffer(store_with_site: Store) -> None:
    config = {"train": {"lr": 0.01, "patch_size": [6, 12]}, "note": float("nan")}
    version = store_with_site.add_version(
        parent=None, site="siteA", strategy="dakr", config=config, seed=7, tensors=tensors(3.0),
        buffer=buffer(["siteA", "siteA"]),
    )
    assert (version.id, version.parent, version.site, version.strategy, version.seed, version.active) == (
        1, None, "siteA", "dakr", 7, True,
    )
    assert version.config["train"] == config["train"] and math.isnan(version.config["note"])
    loaded = store_with_site.load_tensors(1)
    assert loaded.keys() == tensors(3.0).keys()
    for name, expected in tensors(3.0).items():
        assert torch.equal(loaded[name], expected) and loaded[name].dtype == expected.dtype
    stored_buffer = store_with_site.load_buffer(1)
    assert stored_buffer is not None
    for name, expected in buffer(["siteA", "siteA"]).items():
        np.testing.assert_array_equal(stored_buffer[name], expected)
    expected_files = ["buffer.npz", "config.json", "weights.safetensors"]
    assert folder_names(store_with_site.version_dir(1)) == expected_files
    assert store_with_site.load_buffer(add_version(store_with_site, "siteA", 1.0)) is None


def test_version_ids_increase_and_stored_versions_never_change(store_with_site: Store) -> None:
    first = add_version(store_with_site, "siteA", 1.0)
    weights = (store_with_site.version_dir(first) / "weights.safetensors").read_bytes()
    second = add_version(store_with_site, "siteA", 2.0, parent=first)
    third = add_version(store_with_site, "siteA", 3.0, parent=second)
    assert [v.id for v in store_with_site.versions()] == [1, 2, 3] == [first, second, third]
    assert [v.parent for v in store_with_site.versions()] == [None, 1, 2]
    assert (store_with_site.version_dir(first) / "weights.safetensors").read_bytes() == weights
    assert torch.equal(store_with_site.load_tensors(first)["conv.bias"], tensors(1.0)["conv.bias"])


def test_invalid_versions_are_refused_and_add_nothing(store_with_site: Store) -> None:
    with pytest.raises(StoreError, match="parent version 9 does not exist"):
        add_version(store_with_site, "siteA", 1.0, parent=9)
    with pytest.raises(StoreError, match="'nowhere' of the new version is not registered"):
        add_version(store_with_site, "nowhere", 1.0)
    with pytest.raises(StoreError, match="no 1-D 'site' array"):
        add_version(store_with_site, "siteA", 1.0, buffer={"image": np.zeros((2, 2))})
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        add_version(store_with_site, "siteA", 1.0, config={"bad": object()})
    with pytest.raises(StoreError, match="unknown model version 1; known versions: none"):
        store_with_site.version(1)
    assert store_with_site.versions() == []
    assert folder_names(store_with_site.path / "models") == []


def test_activate_moves_the_pointer_for_rollback(store_with_site: Store) -> None:
    assert store_with_site.active_version() is None
    add_version(store_with_site, "siteA", 1.0)
    add_version(store_with_site, "siteA", 2.0, parent=1)
    assert store_with_site.active_version().id == 2
    assert store_with_site.activate(1).active
    assert store_with_site.active_version().id == 1
    assert [v.active for v in store_with_site.versions()] == [True, False]
    add_version(store_with_site, "siteA", 3.0, parent=1, activate=False)
    assert store_with_site.active_version().id == 1
    with pytest.raises(StoreError, match="unknown model version 4"):
        store_with_site.activate(4)
    assert store_with_site.active_version().id == 1


# ---------------------------------------------------------------------- crash safety
class SimulatedCrash(Exception):
    pass


def crash_after(real):
    """Wrap ``real`` so the process "dies" right after it ran."""

    def wrapper(*args, **kwargs):
        real(*args, **kwargs)
        raise SimulatedCrash

    return wrapper


def raise_crash(*args, **kwargs):
    raise SimulatedCrash


def assert_version_state(store: Store, ids: list[int], active: int | None) -> None:
    for view in (store, Store.open(store.path)):
        assert [v.id for v in view.versions()] == ids
        assert (view.active_version().id if view.active_version() else None) == active


@pytest.mark.parametrize(
    "target",
    [
        ("os", "replace", raise_crash),
        ("store", "set_active", raise_crash),
        ("store", "move_into_place", crash_after(store_module.move_into_place)),
    ],
    ids=["rename-fails", "db-insert-fails", "crash-after-rename-before-commit"],
)
def test_crash_during_add_version_leaves_the_previous_state(
    store_with_site: Store, monkeypatch: pytest.MonkeyPatch, target
) -> None:
    add_version(store_with_site, "siteA", 1.0)
    module, name, replacement = target
    with monkeypatch.context() as patch:
        patch.setattr(os if module == "os" else store_module, name, replacement)
        with pytest.raises(SimulatedCrash):
            add_version(store_with_site, "siteA", 2.0, parent=1)
    assert_version_state(store_with_site, [1], active=1)
    with pytest.raises(StoreError):
        store_with_site.load_tensors(2)
    assert folder_names(store_with_site.path / "models") == ["1"]

    assert add_version(store_with_site, "siteA", 5.0, parent=1) == 2
    assert_version_state(store_with_site, [1, 2], active=2)
    assert torch.equal(store_with_site.load_tensors(2)["conv.bias"], tensors(5.0)["conv.bias"])


def test_orphan_version_folder_from_a_crash_is_invisible_and_replaced(store_with_site: Store) -> None:
    orphan = store_with_site.path / "models" / "1"
    orphan.mkdir()
    (orphan / "weights.safetensors").write_bytes(b"half written")
    assert store_with_site.versions() == []
    assert add_version(store_with_site, "siteA", 4.0) == 1
    assert torch.equal(store_with_site.load_tensors(1)["conv.bias"], tensors(4.0)["conv.bias"])


@pytest.mark.parametrize(
    "crash",
    ["rename-fails", "db-insert-fails", "crash-after-rename-before-commit"],
)
def test_crash_during_add_site_leaves_nothing_registered(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    spec = make_site(tmp_path / "raw")
    real_replace = os.replace

    def failing_folder_rename(source, target):
        if Path(source).is_dir():
            raise SimulatedCrash
        real_replace(source, target)

    replacements = {
        "rename-fails": (os, "replace", failing_folder_rename),
        "db-insert-fails": (store_module, "insert_site", raise_crash),
        "crash-after-rename-before-commit": (
            store_module, "move_into_place", crash_after(store_module.move_into_place)
        ),
    }
    with monkeypatch.context() as patch:
        patch.setattr(*replacements[crash])
        with pytest.raises(SimulatedCrash):
            store.add_site("siteA", spec)
    reopened = Store.open(store.path)
    for view in (store, reopened):
        assert view.sites() == [] and view.label_names is None
    assert folder_names(store.path / "sites") == []

    info = store.add_site("siteA", spec)
    assert info.n_train + info.n_audit == 4
    assert all(record.image_path.is_file() for record in store.cases("siteA"))


def test_temp_folders_are_ignored_and_stale_ones_removed_on_open(store_with_site: Store) -> None:
    add_version(store_with_site, "siteA", 1.0)
    models = store_with_site.path / "models"
    stale, fresh = models / ".tmp-stale", models / ".tmp-fresh"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert [v.id for v in store_with_site.versions()] == [1]
    Store.open(store_with_site.path)
    assert folder_names(models) == [".tmp-fresh", "1"]


# ---------------------------------------------------------------------- purge
def test_purge_removes_the_sites_files_and_buffer_samples_only(store: Store, tmp_path: Path) -> None:
    store.add_site("siteA", make_site(tmp_path / "raw_a"))
    store.add_site("siteB", make_site(tmp_path / "raw_b"))
    mixed = buffer(["siteA", "siteB", "siteA", "siteB"])
    add_version(store, "siteA", 1.0, buffer=mixed)
    add_version(store, "siteB", 2.0, parent=1, buffer=buffer(["siteB"]))
    only_b_bytes = (store.version_dir(2) / "buffer.npz").read_bytes()
    audit_a = store.cases("siteA", "audit")[0].case_id
    audit_b = store.cases("siteB", "audit")[0].case_id
    store.record_evaluations(
        [EvaluationRecord(1, "siteA", audit_a, {"A": 0.5, "B": 0.7}, {"A": 1.0, "B": 2.0}),
         EvaluationRecord(1, "siteB", audit_b, {"A": 0.9, "B": 0.8}, {"A": 1.0, "B": 2.0})]
    )
    for site, case in (("siteA", audit_a), ("siteB", audit_b)):
        path = store.prediction_path(1, site, case)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"prediction")
    matrix_before = store.dice_matrix()

    info = store.purge_site("siteA")

    assert info.purged and info.n_train + info.n_audit == 4 and not store.site("siteB").purged
    assert all(r.image_path is None and r.label_path is None for r in store.cases("siteA"))
    assert not (store.path / "sites" / "siteA").exists()
    assert all(r.image_path.is_file() and r.label_path.is_file() for r in store.cases("siteB"))
    assert not store.prediction_path(1, "siteA", audit_a).exists()
    assert store.prediction_path(1, "siteB", audit_b).is_file()
    kept = store.load_buffer(1)
    keep = np.array([False, True, False, True])
    np.testing.assert_array_equal(kept["site"], ["siteB", "siteB"])
    np.testing.assert_array_equal(kept["image"], mixed["image"][keep])
    np.testing.assert_array_equal(kept["label"], mixed["label"][keep])
    np.testing.assert_array_equal(kept["class_values"], mixed["class_values"])
    assert (store.version_dir(2) / "buffer.npz").read_bytes() == only_b_bytes
    assert [v.id for v in store.versions()] == [1, 2]
    assert store.dice_matrix() == matrix_before
    assert len(store.evaluations(site="siteA")) == 1
    assert not [name for name in folder_names(store.version_dir(1)) if name.startswith(".tmp-")]

    add_version(store, "siteB", 3.0, parent=2, buffer=buffer(["siteA", "siteB"]))
    np.testing.assert_array_equal(store.load_buffer(3)["site"], ["siteB"])
    assert store.purge_site("siteA").purged


# ---------------------------------------------------------------------- evaluations
@pytest.fixture
def evaluated(store: Store, tmp_path: Path) -> tuple[Store, list[str], str]:
    """Store with sites X (5 cases, 2 audit) and Y, versions 1 and 2, evaluations on X."""
    store.add_site("X", make_site(tmp_path / "raw_x", n_cases=5), audit_fraction=0.4)
    store.add_site("Y", make_site(tmp_path / "raw_y"))
    add_version(store, "X", 1.0)
    add_version(store, "X", 2.0, parent=1)
    audit = [record.case_id for record in store.cases("X", "audit")]
    train = store.cases("X", "train")[0].case_id
    nan, inf = float("nan"), float("inf")
    store.record_evaluations(
        [
            EvaluationRecord(1, "X", audit[0], {"background": 0.99, "A": 0.8, "B": 0.6}, {"A": 1, "B": 2}),
            EvaluationRecord(1, "X", audit[1], {"background": 0.98, "A": 0.1, "B": nan}, {"A": 3, "B": inf}),
            EvaluationRecord(1, "X", train, {"background": 1.0, "A": 0.0, "B": 0.0}, {"A": 9.0, "B": 9.0}),
            EvaluationRecord(2, "X", audit[0], {"background": 0.9, "A": 0.4, "B": 0.2}, {"A": 1.0, "B": 1.0}),
        ]
    )
    store.record_evaluations(
        [EvaluationRecord(1, "X", audit[1], {"background": 0.98, "A": 0.5, "B": nan}, {"A": 3.0, "B": inf})]
    )
    return store, audit, train


def test_evaluations_upsert_and_round_trip_nan_and_inf(evaluated: tuple[Store, list[str], str]) -> None:
    store, audit, train = evaluated
    records = store.evaluations(version=1, site="X")
    assert sorted(r.case_id for r in records) == sorted([*audit, train])
    updated = next(r for r in records if r.case_id == audit[1])
    assert updated.dice["A"] == 0.5 and math.isnan(updated.dice["B"]) and updated.hd95["B"] == math.inf
    assert len(store.evaluations()) == 4
    assert [r.case_id for r in store.evaluations(version=2)] == [audit[0]]
    assert store.evaluations(site="Y") == []


def test_site_dice_and_matrices_average_audit_cases_of_foreground_classes(
    evaluated: tuple[Store, list[str], str]
) -> None:
    store, _, _ = evaluated
    # version 1 on X: case means (0.8 + 0.6) / 2 = 0.7 and 0.5 (B is NaN); the training case is ignored.
    assert store.site_dice(1, "X") == pytest.approx((0.7 + 0.5) / 2)
    assert store.site_dice(2, "X") == pytest.approx((0.4 + 0.2) / 2)
    assert store.site_dice(1, "Y") is None
    versions, sites, dice = store.dice_matrix()
    assert (versions, sites) == ([1, 2], ["X", "Y"])
    assert dice[0][0] == pytest.approx(0.6) and dice[1][0] == pytest.approx(0.3)
    assert dice[0][1] is None and dice[1][1] is None
    per_class = store.class_dice_matrix()
    assert list(per_class) == ["A", "B"]
    assert per_class["A"][0][0] == pytest.approx((0.8 + 0.5) / 2)
    assert per_class["B"][0][0] == pytest.approx(0.6)
    assert per_class["A"][1] == [pytest.approx(0.4), None]


def test_evaluation_of_unknown_version_or_case_records_nothing(
    evaluated: tuple[Store, list[str], str]
) -> None:
    store, audit, _ = evaluated
    before = store.evaluations()
    with pytest.raises(StoreError, match="unknown version or case"):
        store.record_evaluations(
            [EvaluationRecord(2, "X", audit[1], {"A": 0.1}, {"A": 1.0}),
             EvaluationRecord(7, "X", audit[1], {"A": 0.1}, {"A": 1.0})]
        )
    with pytest.raises(StoreError, match="unknown version or case"):
        store.record_evaluations([EvaluationRecord(1, "X", "no_such_case", {"A": 0.1}, {"A": 1.0})])
    assert len(store.evaluations()) == len(before)


def test_prediction_path_layout_and_unsafe_names(store: Store) -> None:
    assert store.prediction_path(3, "X", "case01") == store.path / "predictions" / "3" / "X" / "case01.nii.gz"
    with pytest.raises(ValueError, match="invalid case name"):
        store.prediction_path(3, "X", "../../etc")


# ---------------------------------------------------------------------- jobs
def test_job_lifecycle(store: Store) -> None:
    job = store.create_job("adapt", {"site": "X", "config": {"train.epochs": 2}})
    assert (job.kind, job.state, job.params, job.error, job.result, job.pid) == (
        "adapt", "queued", {"site": "X", "config": {"train.epochs": 2}}, None, None, None,
    )
    assert len(job.id) == 12 and job.updated == job.created
    time.sleep(0.002)
    running = store.update_job(job.id, state="running", pid=1234)
    assert (running.state, running.pid) == ("running", 1234) and running.updated > job.updated
    done = store.update_job(job.id, state="succeeded", result={"version": 3})
    assert (done.state, done.result, done.pid) == ("succeeded", {"version": 3}, 1234)
    assert done.created == job.created
    failed = store.update_job(store.create_job("evaluate", {}).id, state="failed", error="out of memory")
    assert failed.error == "out of memory"
    assert [j.id for j in store.jobs()] == [failed.id, job.id]
    folder = store.job_dir(job.id)
    assert folder.is_dir() and folder == store.path / "jobs" / job.id


def test_job_errors(store: Store) -> None:
    job = store.create_job("adapt", {})
    with pytest.raises(StoreError, match="unknown job 'nope'"):
        store.job("nope")
    with pytest.raises(StoreError, match="unknown job"):
        store.update_job("nope", state="running")
    with pytest.raises(StoreError, match="unknown job state 'exploded'"):
        store.update_job(job.id, state="exploded")
    with pytest.raises(TypeError, match="unknown fields"):
        store.update_job(job.id, kind="predict")
    assert store.job(job.id).state == "queued"


# ---------------------------------------------------------------------- concurrency
def test_threads_sharing_a_store_do_not_error(store_with_site: Store) -> None:
    errors: list[BaseException] = []
    job_ids: list[str] = []

    def run(work) -> None:
        try:
            work(Store.open(store_with_site.path))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def add_versions(store: Store) -> None:
        for value in range(8):
            add_version(store, "siteA", float(value))

    def run_jobs(store: Store) -> None:
        for _ in range(25):
            job = store.create_job("adapt", {})
            store.update_job(job.id, state="running")
            job_ids.append(job.id)

    def read(store: Store) -> None:
        for _ in range(25):
            store.versions(), store.jobs(), store.dice_matrix(), store.active_version()

    workers = (add_versions, add_versions, run_jobs, read)
    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [v.id for v in store_with_site.versions()] == list(range(1, 17))
    assert folder_names(store_with_site.path / "models") == sorted(str(i) for i in range(1, 17))
    assert sorted(j.id for j in store_with_site.jobs()) == sorted(job_ids) and len(job_ids) == 25
    assert {j.state for j in store_with_site.jobs()} == {"running"}
