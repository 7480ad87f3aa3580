"""The benchmark runner on tiny synthetic sites (``--data``): results layout, shared base, splits, sweep."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from synthetic import SITE_CONTRASTS, TINY_OVERRIDES, write_site

from dakr import benchmark
from dakr.benchmark import BaseSpec, RunSpec, _execute, _finished, _identity, _record_path, expand_variants, run_benchmark, select_winners, user_site_dirs
from dakr.config import ExperimentConfig, apply_overrides
from dakr.cli import main
from dakr.data.errors import DataError
from dakr.governance.strict_json import json_safe
from dakr.store import Store

TINY_BENCHMARK = {
    "name": "tiny",
    "demo": {},
    "overrides": {**{k: v for k, v in TINY_OVERRIDES.items() if k != "continual.buffer_samples"}, "train.checkpoint_every": 0},
    "strategies": ["replay", "dakr"],
    "seeds": 2,
    "buffer_budgets": [8],
    "budget_strategies": [],
    "matched_compute": True,
    "workers": 2,
    "audit_fraction": 0.34,
    "validation_fraction": 0.25,
    "bootstrap_resamples": 200,
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    for index, (name, contrast) in enumerate(SITE_CONTRASTS.items()):
        write_site(root, name, contrast, cases=6, seed=index)
    return root


def _run(tmp_path: Path, sites: Path, **changes) -> tuple[Path, dict]:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_BENCHMARK, **changes}))
    run_benchmark(str(config), tmp_path, data_dir=sites, sites=list(SITE_CONTRASTS))
    return tmp_path, json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_tiny_benchmark_writes_per_seed_paired_and_a_shared_base(tmp_path, sites) -> None:
    out, results = _run(tmp_path, sites)
    assert {"config", "sites", "device", "strategies", "paired", "splits"} <= results.keys()
    assert results["sites"] == list(SITE_CONTRASTS)
    # The device names the torch build and the CPU's kernel set: what bit-for-bit reproduction needs.
    assert results["device"].startswith("cpu (")
    assert torch.backends.cpu.get_cpu_capability() in results["device"] and f"torch {torch.__version__}" in results["device"]
    for name in ("replay", "dakr", "replay-matched"):
        row = results["strategies"][name]
        assert {"acc", "bwt", "forgetting", "fwt", "new_site", "seconds_per_step", "acc_std"} <= row.keys()
        assert [seed["seed"] for seed in row["per_seed"]] == [0, 1]
        first = row["per_seed"][0]
        assert len(first["matrix"]) == 3 and len(first["case_dice"]) == 3  # stages x sites x audit cases
        assert [len(cases) for cases in first["case_dice"][0]] == [len(first["cases"][s]) for s in SITE_CONTRASTS] == [2, 2, 2]
    for key in ("dakr-replay@buffer=8", "dakr-replay-matched@buffer=8"):
        low, mean, high = results["paired"][key]["acc"]
        assert low <= mean <= high
    for site, split in results["splits"].items():
        assert split["validation"] and not set(split["validation"]) & set(split["audit"])
    # Stage 1 is shared: replay, dakr and matched-compute replay start stage 2 from the identical base model.
    bases = []
    for run in ("replay-seed0", "dakr-seed0", "replay-matched-seed0"):
        store = Store.open(out / "runs" / run)
        bases.append(store.load_tensors(store.versions()[0].id))
    for other in bases[1:]:
        assert all(torch.equal(bases[0][k], other[k]) for k in bases[0] if k.startswith("net."))
    matched = Store.open(out / "runs" / "replay-matched-seed0").versions()
    assert matched[0].config["train"]["steps_per_epoch"] == TINY_OVERRIDES["train.steps_per_epoch"]
    assert (out / "results.md").read_text().count("[") >= 2  # intervals printed


@pytest.mark.slow
def test_validation_sweep_scores_validation_cases_and_names_a_winner(tmp_path, sites) -> None:
    grid = {"name": "dakr", "strategy": "dakr", "grid": {"continual.lambda_cna": [0.1, 1.0]}}
    out, results = _run(tmp_path, sites, strategies=[grid], seeds=1, matched_compute=False, timing=False, split="validation")
    assert results["split"] == "validation"
    assert set(results["strategies"]) == {"dakr[lambda_cna=0.1]", "dakr[lambda_cna=1.0]"}
    winner = json.loads((out / "winners.json").read_text())["dakr"]
    assert winner["variant"] in results["strategies"]
    assert winner["acc"] == max(row["acc"] for row in results["strategies"].values())
    store = Store.open(out / "runs" / "dakr_lambda_cna_0.1_-seed0")
    assert store.evaluations() == []  # the audit split was never read
    first = results["strategies"]["dakr[lambda_cna=0.1]"]["per_seed"][0]
    assert first["cases"] == {site: split["validation"] for site, split in results["splits"].items()}


@pytest.mark.slow
def test_resume_reuses_finished_runs_and_adds_only_new_seeds(tmp_path, sites, capsys) -> None:
    changes = {"strategies": ["replay"], "matched_compute": False, "timing": False}
    _, first = _run(tmp_path, sites, seeds=1, **changes)
    record = tmp_path / "runs" / "replay-seed0.done.json"
    written = record.stat().st_mtime_ns
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_BENCHMARK, **changes, "seeds": 2}))
    capsys.readouterr()
    resumed = run_benchmark(str(config), tmp_path, data_dir=sites, sites=list(SITE_CONTRASTS), resume=True)
    assert capsys.readouterr().out.count("== resume: 1 of 2 finished runs reused") == 2  # base models, then runs
    assert record.stat().st_mtime_ns == written
    seeds = resumed["strategies"]["replay"]["per_seed"]
    assert [seed["seed"] for seed in seeds] == [0, 1]
    assert json_safe(seeds[0]) == first["strategies"]["replay"]["per_seed"][0]
    changed = {**changes, "overrides": {**TINY_BENCHMARK["overrides"], "train.lr": 0.002}}
    config.write_text(json.dumps({**TINY_BENCHMARK, **changed, "seeds": 1}))
    run_benchmark(str(config), tmp_path, data_dir=sites, sites=list(SITE_CONTRASTS), resume=True)
    assert record.stat().st_mtime_ns != written  # other settings: the run is done again


def _changed_default(setting: str, value: object) -> Callable[[], ExperimentConfig]:
    """An ``ExperimentConfig`` factory whose default for ``setting`` is ``value``, as after an upgrade."""
    return lambda: apply_overrides(ExperimentConfig(), {setting: value})


def test_resume_reruns_what_a_changed_default_would_change(tmp_path, monkeypatch) -> None:
    base = BaseSpec(str(tmp_path / "base"), ["site1"], {"train.seed": 0}, 0.25, 0.2, 0, "audit")
    run = RunSpec("dakr", "dakr", 0, 8, ["site1", "site2"], str(tmp_path / "run"), base.store_dir, {"train.seed": 0}, "audit")
    for spec in (base, run):
        Path(spec.store_dir).mkdir()
        _record_path(spec).write_text(json.dumps({**_identity(spec), "result": {"acc": 1.0}}))
    assert _finished(run) == {"acc": 1.0} and _finished(base) == {"acc": 1.0}
    monkeypatch.setattr(benchmark, "ExperimentConfig", _changed_default("continual.lambda_cra", 0.9))
    assert _finished(run) is None  # the run would align with another weight: run it again
    assert _finished(base) == {"acc": 1.0}  # stage 1 does not depend on the alignment weights
    monkeypatch.setattr(benchmark, "ExperimentConfig", _changed_default("train.lr", 0.5))
    assert _finished(base) is None
    _record_path(run).write_text(json.dumps({"spec": _identity(run)["spec"], "result": {"acc": 1.0}}))
    monkeypatch.undo()
    assert _finished(run) is None  # a record without its resolved settings is not trusted


@dataclass
class _Spec:
    store_dir: str
    fail: bool


def _make_store(spec: _Spec) -> dict[str, str]:
    """A stand-in run (in a child process): creates its store folder, or fails."""
    Path(spec.store_dir).mkdir()
    if spec.fail:
        raise ValueError(f"run {spec.store_dir} failed")
    return {"store": spec.store_dir}


def test_a_failed_run_keeps_the_finished_ones_for_resume(tmp_path) -> None:
    good, bad = _Spec(str(tmp_path / "good"), False), _Spec(str(tmp_path / "bad"), True)
    with pytest.raises(ValueError, match="failed"):
        _execute(_make_store, [good, bad], workers=2)
    assert (tmp_path / "good.done.json").is_file() and not (tmp_path / "bad.done.json").exists()
    shutil.rmtree(tmp_path / "bad")
    retry = _Spec(bad.store_dir, False)
    assert _execute(_make_store, [good, retry], workers=2, resume=True) == [{"store": good.store_dir}, {"store": retry.store_dir}]


def test_grid_variants_expand_with_their_overrides() -> None:
    variants = expand_variants(["replay", {"name": "ewc", "strategy": "ewc", "grid": {"continual.ewc_lambda": [10.0, 100.0]}}])
    assert [(v.name, v.overrides) for v in variants] == [
        ("replay", {}), ("ewc[ewc_lambda=10.0]", {"continual.ewc_lambda": 10.0}), ("ewc[ewc_lambda=100.0]", {"continual.ewc_lambda": 100.0}),
    ]
    with pytest.raises(ValueError, match="more than once"):
        expand_variants(["replay", "replay"])
    with pytest.raises(ValueError, match="unknown strategy"):
        expand_variants([{"strategy": "nope"}])
    rows = {v.name: {"acc": acc, "acc_std": None} for v, acc in zip(variants, (50.0, 40.0, 45.0))}
    winners = select_winners(rows, {v.name: v for v in variants}, 8)
    assert winners["ewc"]["variant"] == "ewc[ewc_lambda=100.0]" and winners["replay"]["acc"] == 50.0


def test_own_site_folders_are_checked_with_clear_errors(tmp_path, sites, capsys) -> None:
    assert [p.name for p in user_site_dirs(sites, ["siteB", "siteA"])] == ["siteB", "siteA"]
    with pytest.raises(DataError, match="siteZ: is not a folder.*found: siteA, siteB, siteC"):
        user_site_dirs(sites, ["siteA", "siteZ"])
    with pytest.raises(ValueError, match="at least two site folder names"):
        user_site_dirs(sites, ["siteA"])
    write_site(tmp_path, "tiny", (0.0, 1.0, 2.0), cases=2)
    write_site(tmp_path, "other", (0.0, 1.0, 2.0), cases=3)
    with pytest.raises(DataError, match="tiny: has 2 case.*at least 3"):
        user_site_dirs(tmp_path, ["other", "tiny"])
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="imagesTr"):
        user_site_dirs(tmp_path, ["other", "flat"])
    assert main(["benchmark", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "missing"), "--sites", "a", "b"]) == 1
    assert "missing: is not a folder" in capsys.readouterr().err
