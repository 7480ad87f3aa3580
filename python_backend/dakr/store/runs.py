"""Which training run stored a version, and the activation rule that keeps lineage true.

Every version that ``adapt`` stores carries the id of the run that trained it (the id its
checkpoints record). The id is unique, so one run can never store two versions, and a resumed
run finds the version it already stored. When a run finishes, its version becomes active only
if the active version is still the run's parent; a rollback made while the run trained is
never undone. That decision is made once per version, in one transaction, and recorded, so
repeating it (a resumed job) changes nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dakr.store.queries import set_active
from dakr.store.records import StoreError
from dakr.store.schema import DB_NAME, connect, transaction

if TYPE_CHECKING:
    from dakr.store.records import VersionInfo
    from dakr.store.store import Store

_ACTIVATED, _KEPT_INACTIVE = "activated", "kept_inactive"
_HOW_TO_ACTIVATE = "To use version {version}: `dakr rollback STORE {version}` or POST /api/v1/models/{version}/activate"


@dataclass(frozen=True)
class Activation:
    """The activation decision for a finished run's version.

    ``active`` is the version that was active right after the decision (``version`` itself
    when it was activated).
    """

    version: int
    parent: int | None
    activated: bool
    active: int | None

    @property
    def message(self) -> str:
        """One line for people: what happened and, for a version left inactive, how to use it."""
        parent = "no model (base model)" if self.parent is None else f"version {self.parent}"
        if self.activated:
            return f"version {self.version} is now active (it replaced its parent, {parent})"
        return (
            f"version {self.version} was stored but NOT activated: it was trained from {parent}, but the active "
            f"version was changed to {self.active} meanwhile, and that choice is kept. "
            f"{_HOW_TO_ACTIVATE.format(version=self.version)}"
        )


def store_id(store: Store) -> str:
    """The random id given to the store when it was created (a new store at the same path has another)."""
    with connect(store.path / DB_NAME) as conn:
        row = conn.execute("SELECT id FROM store_identity WHERE slot = 1").fetchone()
    if row is None:
        raise StoreError(f"store {store.path.name!r} has no identity record. Fix: restore it from a backup")
    return row["id"]


def insert_version_run(conn: sqlite3.Connection, version_id: int, run_id: str, job_id: str | None) -> None:
    """Record that run ``run_id`` stored ``version_id``; refused if the run stored a version already.

    Runs inside the transaction that inserts the version, so both happen or neither.
    """
    row = conn.execute("SELECT version FROM version_runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is not None:
        raise StoreError(
            f"run {run_id} already stored version {row['version']}; a run stores one version only. "
            f"Fix: finish that version by resuming the run, or start a new run"
        )
    conn.execute(
        "INSERT INTO version_runs (version, run_id, job_id) VALUES (?, ?, ?)", (version_id, run_id, job_id)
    )


def version_of_run(store: Store, run_id: str) -> int | None:
    """The version stored by run ``run_id``, or ``None`` if it stored none (yet)."""
    with connect(store.path / DB_NAME) as conn:
        row = conn.execute("SELECT version FROM version_runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else row["version"]


def activate_if_parent_still_active(store: Store, version_id: int, parent_id: int | None) -> Activation:
    """Activate ``version_id`` only if the active version is still ``parent_id`` (none for a base model).

    Otherwise the version stays inactive and the active version is kept. The decision is
    recorded for versions stored by a run; a second call returns the recorded decision.
    """
    store.version(version_id)
    with transaction(store.path / DB_NAME) as conn:
        recorded = _recorded(conn, version_id, parent_id)
        if recorded is not None:
            return recorded
        row = conn.execute("SELECT version FROM active_version WHERE slot = 1").fetchone()
        active = None if row is None else row["version"]
        activated = active in (parent_id, version_id)
        if activated:
            set_active(conn, version_id)
            active = version_id
        conn.execute(
            "UPDATE version_runs SET activation = ?, active_at_decision = ? WHERE version = ?",
            (_ACTIVATED if activated else _KEPT_INACTIVE, active, version_id),
        )
    return Activation(version_id, parent_id, activated, active)


def recorded_activation(store: Store, version_id: int) -> Activation | None:
    """The activation decision recorded for a version, or ``None`` if none was made (yet)."""
    parent = store.version(version_id).parent
    with connect(store.path / DB_NAME) as conn:
        return _recorded(conn, version_id, parent)


def activation_summary(store: Store, version: VersionInfo) -> str:
    """One line for people on whether a run's ``version`` is active and, if not, why and how to use it."""
    if version.active:
        parent = "base model (no parent)" if version.parent is None else f"parent {version.parent}"
        return f"version {version.id} ({version.strategy} on {version.site}, {parent}) is now active"
    recorded = recorded_activation(store, version.id)
    if recorded is not None and not recorded.activated:
        return recorded.message
    active = store.active_version()
    return (
        f"version {version.id} is stored but not active (the active version is {active.id if active else 'none'}). "
        f"{_HOW_TO_ACTIVATE.format(version=version.id)}"
    )


def _recorded(conn: sqlite3.Connection, version_id: int, parent_id: int | None) -> Activation | None:
    row = conn.execute(
        "SELECT activation, active_at_decision FROM version_runs WHERE version = ?", (version_id,)
    ).fetchone()
    if row is None or row["activation"] is None:
        return None
    return Activation(version_id, parent_id, row["activation"] == _ACTIVATED, row["active_at_decision"])
