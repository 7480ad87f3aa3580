"""Resume and lineage: checkpoints record their job, resume keeps the true parent, one version per run."""

import itertools
import signal

import pytest
import torch

from dakr import pipeline
from dakr.cli import main
from dakr.pipeline import adapt, lineage
from dakr.resume import ResumeError, read_saved_run
from dakr.service.job_files import WORK_DIR
from dakr.service.worker import worker_main
from dakr.store import StoreError
from dakr.governance.decisions import activation_outcome, gate_result
from dakr.store.runs import activate_if_parent_still_active, recorded_activation
from dakr.training import TrainingCancelled
from dakr.training.checkpoint import checkpoint_file, read_checkpoint, write_checkpoint

from synthetic import TINY_OVERRIDES

#: Enough steps that a stop after two leaves an unfinished checkpoint.
LONGER = {**TINY_OVERRIDES, "train.steps_per_epoch": 6}


def stop_after(steps: int):
    """A ``should_stop`` that fires when ``steps`` steps have run (it is polled before each step)."""
    calls = itertools.count()
    return lambda: next(calls) >= steps


def interrupted_run(store, site, work_dir, strategy="finetune"):
    with pytest.raises(TrainingCancelled):
        adapt(store, site, strategy=strategy, overrides=LONGER, work_dir=work_dir, should_stop=stop_after(2))


def tiny_version(store, parent, run_id=None):
    tensors = {"net.weight": torch.zeros(2)}
    return store.add_version(
        parent=parent, site="siteA", strategy="finetune", config={}, seed=0, tensors=tensors, buffer=None,
        activate=False, run_id=run_id,
    ).id


# -- resume after a rollback ----------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_rollback_records_the_true_parent_and_keeps_the_rollback(registered_store, tmp_path):
    store, work = registered_store, tmp_path / "work"
    v1 = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    v2 = adapt(store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES, activate="always")
    interrupted_run(store, "siteC", work)
    store.activate(v1.id)
    events = []
    v3 = adapt(
        store, "siteC", strategy="finetune", overrides=LONGER, work_dir=work, resume=True, progress=events.append,
        activate="always",
    )
    assert v3.parent == v2.id, "the resumed run trained from v2, so v2 is its parent"
    assert [v.id for v in lineage(store, v3)] == [v1.id, v2.id, v3.id]
    assert store.active_version().id == v1.id and not v3.active, "the rollback made during the run is kept"
    decision = recorded_activation(store, v3.id)
    assert not decision.activated and decision.active == v1.id
    note = [e.message for e in events if e.stage == "activate"][-1]
    assert "NOT activated" in note and f"changed to {v1.id}" in note and note == activation_outcome(store, v3)
    gate = gate_result(store, v3.id)
    assert not gate.activated and gate.superseded == v1.id and not gate.override
    # A held version needs an approval; an accepted one can simply be rolled back to.
    assert f"{'approve' if gate.verdict == 'held' else 'rollback'} STORE {v3.id}" in note
    assert store.site_dice(v3.id, "siteC") is not None, "the inactive version is still evaluated"


@pytest.mark.slow
def test_resume_refuses_when_the_recorded_parent_is_gone(registered_store, tmp_path):
    store, work = registered_store, tmp_path / "work"
    interrupted_run(store, "siteA", work)
    path = checkpoint_file(work)
    state = read_checkpoint(path)
    state["run"] = state["run"].replace('"parent": null', '"parent": 99')
    write_checkpoint(path, state)
    with pytest.raises(ResumeError, match="trains from version 99, which is no longer in store 'store'"):
        adapt(store, "siteA", strategy="finetune", overrides=LONGER, work_dir=work, resume=True)
    assert store.versions() == []


# -- one version per run --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("failing_step", ["mark_done", "evaluate_version"])
def test_a_run_killed_between_store_and_activate_finishes_the_same_version(registered_store, tmp_path, monkeypatch, failing_step):
    store, work = registered_store, tmp_path / "work"
    v1 = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, failing_step, lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError, match="killed"):
            adapt(store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES, work_dir=work, activate="always")
    orphan = store.versions()[-1]
    assert orphan.id == v1.id + 1 and not orphan.active and store.active_version().id == v1.id
    events = []
    finished = adapt(
        store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES, work_dir=work, resume=True, progress=events.append,
        activate="always",
    )
    assert finished.id == orphan.id and finished.active and finished.parent == v1.id
    assert [v.id for v in store.versions()] == [v1.id, orphan.id], "no second version"
    assert not any(e.stage == "train" for e in events), "the stored version is finished, not trained again"
    assert store.site_dice(orphan.id, "siteB") is not None
    assert read_saved_run(work).version == orphan.id


@pytest.mark.slow
def test_a_finished_checkpoint_never_yields_a_second_version(registered_store, tmp_path):
    store, work = registered_store, tmp_path / "work"
    v1 = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES, work_dir=work)
    state = read_checkpoint(checkpoint_file(work))
    assert state["finished"] and state["version"] == v1.id and "model" not in state, "marked done, training state dropped"
    again = adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES, work_dir=work, resume=True)
    assert again.id == v1.id and [v.id for v in store.versions()] == [v1.id]
    with pytest.raises(StoreError, match=f"already stored version {v1.id}"):
        tiny_version(store, v1.id, run_id=read_saved_run(work).record.run_id)
    # The scenario: a finished work dir reused with --resume for another site.
    with pytest.raises(ResumeError, match="belongs to another job: site 'siteA'.*this run is site 'siteB'.*differs in: site"):
        adapt(store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES, work_dir=work, resume=True)
    assert [v.id for v in store.versions()] == [v1.id]


@pytest.mark.slow
def test_resume_refuses_another_jobs_checkpoint_naming_both(registered_store, tmp_path):
    store, work = registered_store, tmp_path / "work"
    interrupted_run(store, "siteA", work)
    saved = read_saved_run(work)
    assert not saved.finished and saved.version is None
    record = saved.record
    assert (record.site, record.strategy, record.parent, record.seed, record.job_id) == ("siteA", "finetune", None, 0, None)
    assert record.store_name == "store" and len(record.config_hash) == 12 and record.config["train.steps_per_epoch"] == 6
    assert not list(work.glob("*.tmp")), "the checkpoint is written through a temp file that is renamed away"
    with pytest.raises(ResumeError) as refused:
        adapt(store, "siteB", strategy="finetune", overrides=LONGER, work_dir=work, resume=True)
    message = str(refused.value)
    assert "site 'siteA'" in message and "site 'siteB'" in message and "Fix:" in message
    with pytest.raises(ResumeError, match=r"train.epochs 1 vs 2"):
        adapt(store, "siteA", strategy="finetune", overrides={**LONGER, "train.epochs": 2}, work_dir=work, resume=True)
    with pytest.raises(ResumeError, match="has not finished.*add --resume"):
        adapt(store, "siteA", strategy="finetune", overrides=LONGER, work_dir=work)
    assert store.versions() == []


# -- the activation rule --------------------------------------------------------------------------
def test_activation_only_over_the_parent_and_decided_once(registered_store):
    store = registered_store
    v1 = tiny_version(store, None, run_id="run1")
    assert activate_if_parent_still_active(store, v1, None).activated, "a base model activates over no model"
    v2 = tiny_version(store, v1, run_id="run2")
    v3 = tiny_version(store, v1, run_id="run3")
    assert activate_if_parent_still_active(store, v2, v1).activated
    kept = activate_if_parent_still_active(store, v3, v1)
    assert not kept.activated and kept.active == v2 and store.active_version().id == v2
    store.activate(v1)
    assert activate_if_parent_still_active(store, v3, v1) == kept, "a repeated decision changes nothing"
    assert store.active_version().id == v1


# -- the command line -----------------------------------------------------------------------------
def test_cli_resume_needs_a_work_dir_with_a_checkpoint(registered_store, tmp_path, capsys):
    store = str(registered_store.path)
    assert main(["adapt", store, "--site", "siteA", "--resume"]) == 1
    assert "Fix: pass --work-dir" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["adapt", store, "--site", "siteA", "--resume", "--work-dir", str(empty)]) == 1
    error = capsys.readouterr().err
    assert f"no checkpoint to resume in {empty}" in error and "drop --resume" in error
    assert registered_store.versions() == []


# -- service jobs ---------------------------------------------------------------------------------
@pytest.fixture
def keep_signal_handlers():
    """The worker installs a SIGTERM handler; restore pytest's afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
@pytest.mark.usefixtures("keep_signal_handlers")
def test_a_service_job_resumed_after_storing_finishes_its_version(registered_store, monkeypatch):
    store = registered_store
    job = store.create_job("adapt", {"site": "siteA", "strategy": "finetune", "config": TINY_OVERRIDES})
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "mark_done", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
        assert worker_main(store.path, job.id) == 1
    assert store.job(job.id).state == "failed" and len(store.versions()) == 1
    assert read_saved_run(store.job_dir(job.id) / WORK_DIR).record.job_id == job.id
    assert worker_main(store.path, job.id) == 0
    result = store.job(job.id).result
    assert result["version"] == store.versions()[0].id and len(store.versions()) == 1
    assert result["active"] and "is now active" in result["activation"]
    other = store.create_job("adapt", {"site": "siteA", "strategy": "finetune", "config": TINY_OVERRIDES})
    (store.job_dir(other.id) / WORK_DIR).mkdir()
    checkpoint_file(store.job_dir(other.id) / WORK_DIR).write_bytes(checkpoint_file(store.job_dir(job.id) / WORK_DIR).read_bytes())
    assert worker_main(store.path, other.id) == 1
    error = store.job(other.id).error
    assert f"job {job.id}" in error and f"job {other.id}" in error and len(store.versions()) == 1
