"""Which job a work folder's checkpoint belongs to, and the rules for continuing it.

Every checkpoint of ``adapt`` records its run: a random run id, the store's identity, the site,
strategy, parent version, a hash of the effective config, the seed and (for service jobs) the
job id, plus whether training finished. The rules:

- ``resume`` needs a work folder holding a checkpoint, and that checkpoint must belong to the
  same job (same store, site, strategy, settings, seed and job); otherwise the run is refused
  with a message naming both jobs.
- A resumed run trains from the parent its checkpoint records, never from whatever version
  is active now; if that parent is gone it is refused.
- Once a run's version is stored, its checkpoint is marked done (its training state is dropped)
  and resuming it only finishes that version: a run never stores a second version.
- A fresh run refuses a work folder holding an unfinished run, so no progress is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dakr.config import ExperimentConfig, flatten
from dakr.store import Store, StoreError, VersionInfo
from dakr.store.runs import store_id, version_of_run
from dakr.training.checkpoint import checkpoint_file, read_checkpoint, write_checkpoint

#: Hex digits of the config hash shown to people.
HASH_DIGITS = 12


class ResumeError(ValueError):
    """A run cannot start or resume with the given work folder; the message says what to do."""


@dataclass(frozen=True)
class RunRecord:
    """The job a checkpoint belongs to. ``config`` is the effective config, flattened."""

    run_id: str
    store_id: str
    store_name: str
    site: str
    strategy: str
    parent: int | None
    config_hash: str
    seed: int
    job_id: str | None
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The job in words, e.g. ``site 'A', strategy dakr, parent version 2, config 1a2b..., seed 0, store 's'``."""
        parent = "no parent (base model)" if self.parent is None else f"parent version {self.parent}"
        job = f", job {self.job_id}" if self.job_id else ""
        return (
            f"site {self.site!r}, strategy {self.strategy}, {parent}, config {self.config_hash}, seed {self.seed}, "
            f"store {self.store_name!r}{job}"
        )


@dataclass(frozen=True)
class SavedRun:
    """What a work folder's checkpoint says: its run, whether training finished, the version it stored."""

    record: RunRecord
    finished: bool
    version: int | None


def config_hash(config: ExperimentConfig) -> str:
    """A short, stable hash of the effective config (the same settings give the same hash)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_DIGITS]


def new_run(
    store: Store, *, site: str, strategy: str, parent: VersionInfo | None, config: ExperimentConfig, job_id: str | None
) -> RunRecord:
    """The record of a new run (a fresh run id)."""
    return RunRecord(
        run_id=uuid.uuid4().hex,
        store_id=store_id(store),
        store_name=store.path.name,
        site=site,
        strategy=strategy,
        parent=parent.id if parent else None,
        config_hash=config_hash(config),
        seed=config.train.seed,
        job_id=job_id,
        config=json.loads(json.dumps(flatten(config.to_dict()), default=list)),
    )


def has_checkpoint(work_dir: str | Path) -> bool:
    """Whether ``work_dir`` holds a checkpoint (finished or not)."""
    return checkpoint_file(work_dir).is_file()


def read_saved_run(work_dir: str | Path) -> SavedRun | None:
    """The run recorded by the checkpoint in ``work_dir``, or ``None`` when there is no checkpoint."""
    path = checkpoint_file(work_dir)
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
        record = RunRecord(**json.loads(state["run"]))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise ResumeError(
            f"{path} is not a checkpoint this dakr can resume ({type(error).__name__}: {error}); it may be "
            "damaged or written by an older dakr. Fix: start the run again without --resume in an empty --work-dir"
        ) from error
    return SavedRun(record, bool(state.get("finished")), state.get("version"))


def saved_run_to_resume(store: Store, work_dir: str | Path | None) -> SavedRun:
    """The run to resume from ``work_dir``; refused without a work folder, a checkpoint, or from another store."""
    if work_dir is None:
        raise ResumeError(
            "resume needs the work folder of the interrupted run. Fix: pass --work-dir DIR, the folder given when "
            "the run started"
        )
    saved = read_saved_run(work_dir)
    if saved is None:
        raise ResumeError(
            f"there is no checkpoint to resume in {work_dir} (no {checkpoint_file(work_dir).name}). Fix: pass the "
            "--work-dir of the interrupted run, or drop --resume to start a new run"
        )
    here = store_id(store)
    if saved.record.store_id != here:
        raise ResumeError(
            f"the checkpoint in {work_dir} belongs to a job of another store: {saved.record.describe()} "
            f"(store id {saved.record.store_id}); this is store {store.path.name!r} (store id {here}). "
            "Fix: resume it with the store it was started on, or drop --resume and use another --work-dir"
        )
    return saved


def recorded_parent(store: Store, saved: SavedRun, work_dir: str | Path) -> VersionInfo | None:
    """The parent version the saved run trains from; refused if it is no longer in the store."""
    if saved.record.parent is None:
        return None
    try:
        return store.version(saved.record.parent)
    except StoreError as error:
        raise ResumeError(
            f"the checkpoint in {work_dir} trains from version {saved.record.parent}, which is no longer in store "
            f"{store.path.name!r}; resuming would record a false parent. Fix: drop --resume and start a new run "
            "in an empty --work-dir"
        ) from error


def refuse_unfinished_run(work_dir: str | Path | None) -> None:
    """A fresh run must not overwrite the checkpoint of a run that has not stored its version yet."""
    saved = read_saved_run(work_dir) if work_dir is not None else None
    if saved is not None and saved.version is None:
        state = "finished training but has not stored its version" if saved.finished else "has not finished"
        raise ResumeError(
            f"{work_dir} holds the checkpoint of a run that {state} ({saved.record.describe()}). Fix: add --resume "
            "to continue it, or use another (empty) --work-dir"
        )


def require_same_job(saved: SavedRun, requested: RunRecord, work_dir: str | Path) -> RunRecord:
    """The saved run if ``requested`` is the same job; refused with a message naming both otherwise."""
    recorded = saved.record
    differences = [
        f"{name} {getattr(recorded, name)!r} vs {getattr(requested, name)!r}"
        for name in ("site", "strategy", "seed", "job_id")
        if getattr(recorded, name) != getattr(requested, name)
    ]
    if recorded.config_hash != requested.config_hash:
        keys = sorted(set(recorded.config) | set(requested.config))
        changed = [k for k in keys if recorded.config.get(k) != requested.config.get(k)]
        differences += [f"{k} {recorded.config.get(k)!r} vs {requested.config.get(k)!r}" for k in changed] or ["config"]
    if differences:
        raise ResumeError(
            f"the checkpoint in {work_dir} belongs to another job: {recorded.describe()}; this run is "
            f"{requested.describe()} (differs in: {', '.join(differences)}). Fix: resume with the same site, "
            "strategy and settings, or drop --resume and use another (empty) --work-dir"
        )
    return recorded


def stored_version(store: Store, saved: SavedRun, work_dir: str | Path) -> int | None:
    """The version the saved run already stored, or ``None`` if it still has to store one."""
    version = version_of_run(store, saved.record.run_id)
    if version is None and saved.version is not None:
        raise ResumeError(
            f"the checkpoint in {work_dir} says its run stored version {saved.version}, but store "
            f"{store.path.name!r} has no version of that run (was the store restored from a backup?). Fix: drop "
            "--resume and start a new run in an empty --work-dir"
        )
    return version


def mark_done(work_dir: str | Path, record: RunRecord, version_id: int) -> None:
    """Replace the checkpoint by a done marker naming the stored version (the training state is dropped)."""
    state = {"run": json.dumps(record.to_dict()), "finished": True, "version": version_id}
    write_checkpoint(checkpoint_file(work_dir), state)
