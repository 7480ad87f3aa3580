"""The embedded store: one folder with SQLite metadata and files for volumes and weights.

Layout of a store folder::

    dakr.sqlite3                      metadata (sites, cases, versions, evaluations, jobs)
    sites/<site>/<case>/image.nii.gz  registered volumes (deleted when the site is purged)
    sites/<site>/<case>/label.nii.gz
    models/<id>/weights.safetensors   immutable model versions
    models/<id>/config.json
    models/<id>/buffer.npz            optional replay buffer
    predictions/<version>/<site>/<case>.nii.gz   cached audit predictions
    jobs/<id>/                        job working folders

Blobs are written into a temp folder and renamed into place while the DB write lock is
held, in the same transaction that inserts their rows, so a crash at any point leaves the
previous state readable; leftovers are invisible and removed when the store is opened.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where weights are read or checked: the rest works without it
    import torch

from dakr.data.names import validate_name
from dakr.data.site import SiteSpec
from dakr.data.validation import validate_site
from dakr.progress import ProgressCallback
from dakr.store.aggregate import class_site_means, site_means
from dakr.store.buffers import check_buffer, drop_sites
from dakr.store.files import (
    BUFFER_FILE,
    WEIGHTS_FILE,
    fsync_tree,
    load_npz,
    move_into_place,
    new_temp_dir,
    remove_dir,
    remove_stale_temp_dirs,
    remove_unlisted_dirs,
    replace_npz,
    write_version_files,
)
from dakr.store.queries import (
    EVALUATION_QUERY,
    SITE_QUERY,
    VERSION_QUERY,
    check_lineage,
    insert_site,
    job_record,
    purged_sites,
    require_new_site,
    set_active,
    site_info,
    stored_label_names,
    upsert_evaluation,
    version_info,
)
from dakr.store.records import (
    JOB_STATES,
    SPLITS,
    CaseRecord,
    EvaluationRecord,
    JobRecord,
    SiteInfo,
    StoreError,
    VersionInfo,
    now_iso,
)
from dakr.store.schema import DB_NAME, check_schema, connect, create_schema, dump_json, load_json, transaction
from dakr.store.sites import IMAGE_FILE, LABEL_FILE, check_audit_fraction, copy_cases, frozen_split

_JOB_FIELDS = ("state", "error", "result", "pid")


class Store:
    """A DAKR store folder. Create one with :meth:`init`, open an existing one with :meth:`open`.

    Every method opens its own SQLite connection, so one store may be used from several
    threads and processes at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    # ------------------------------------------------------------------ opening
    @classmethod
    def init(cls, path: str | Path) -> Store:
        """Create a store at ``path`` (a new or empty folder); an existing store is just opened."""
        path = Path(path).expanduser().resolve()
        if (path / DB_NAME).is_file():
            return cls.open(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a folder. Fix: choose a new folder for the store")
        if path.is_dir() and any(path.iterdir()):
            raise StoreError(
                f"{path} is a non-empty folder that is not a DAKR store. "
                "Fix: choose a new or empty folder for the store"
            )
        path.mkdir(parents=True, exist_ok=True)
        create_schema(path / DB_NAME)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open the existing store at ``path`` and remove leftovers of interrupted writes."""
        path = Path(path).expanduser().resolve()
        if not (path / DB_NAME).is_file():
            raise StoreError(f"{path} is not a DAKR store. Fix: run `dakr init {path}`")
        check_schema(path / DB_NAME)
        store = cls(path)
        store._remove_leftovers()
        return store

    @property
    def _db(self) -> Path:
        return self.path / DB_NAME

    @property
    def _sites_dir(self) -> Path:
        return self.path / "sites"

    @property
    def _models_dir(self) -> Path:
        return self.path / "models"

    @property
    def _predictions_dir(self) -> Path:
        return self.path / "predictions"

    def _remove_leftovers(self) -> None:
        """Delete stale temp folders and folders no DB row points to (crashed writes, purges)."""
        for parent in (self._sites_dir, self._models_dir):
            parent.mkdir(exist_ok=True)
            remove_stale_temp_dirs(parent)
        with transaction(self._db) as conn:
            version_names = {str(row["id"]) for row in conn.execute("SELECT id FROM versions")}
            site_names = {row["name"] for row in conn.execute("SELECT name FROM sites WHERE purged = 0")}
            remove_unlisted_dirs(self._models_dir, version_names)
            remove_unlisted_dirs(self._sites_dir, site_names)
        for name in version_names:
            remove_stale_temp_dirs(self._models_dir / name)

    # ------------------------------------------------------------------ sites
    @property
    def label_names(self) -> dict[str, int] | None:
        """The label set ``{name: value}`` fixed by the first site, or ``None`` before it."""
        with connect(self._db) as conn:
            return stored_label_names(conn)

    def add_site(
        self,
        name: str,
        spec: SiteSpec,
        *,
        audit_fraction: float = 0.2,
        seed: int = 0,
        progress: ProgressCallback | None = None,
    ) -> SiteInfo:
        """Validate, copy and register a site, and freeze its train/audit split.

        Raises ``ValueError`` for a bad name, :class:`StoreError` if the site exists and
        ``SiteValidationError`` listing every problem of the data. Nothing is stored on failure.
        """
        validate_name(name, "site")
        check_audit_fraction(audit_fraction)
        with connect(self._db) as conn:
            require_new_site(conn, name)
        label_names = validate_site(spec, self.label_names)
        split = frozen_split([case.case_id for case in spec.cases], audit_fraction, seed)
        temp = new_temp_dir(self._sites_dir)
        try:
            copy_cases(spec, temp, progress)
            fsync_tree(temp)
            with transaction(self._db) as conn:
                insert_site(conn, name, label_names, split, audit_fraction, seed)
                move_into_place(temp, self._sites_dir / name)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return self.site(name)

    def sites(self) -> list[SiteInfo]:
        """All sites in registration order."""
        with connect(self._db) as conn:
            rows = conn.execute(SITE_QUERY.format(where="")).fetchall()
        return [site_info(row) for row in rows]

    def site(self, name: str) -> SiteInfo:
        """One site; :class:`StoreError` naming the known sites if it does not exist."""
        with connect(self._db) as conn:
            row = conn.execute(SITE_QUERY.format(where="WHERE s.name = ?"), (name,)).fetchone()
        if row is None:
            known = ", ".join(site.name for site in self.sites()) or "none"
            raise StoreError(f"unknown site {name!r}; known sites: {known}. Fix: register it first")
        return site_info(row)

    def cases(self, site: str, split: str | None = None) -> list[CaseRecord]:
        """The cases of ``site`` sorted by id, optionally only those of one split."""
        if split is not None and split not in SPLITS:
            raise StoreError(f"unknown split {split!r}. Fix: use one of {', '.join(SPLITS)}")
        info = self.site(site)
        query = "SELECT case_id, split FROM cases WHERE site = ?" + (" AND split = ?" if split else "")
        with connect(self._db) as conn:
            rows = conn.execute(query + " ORDER BY case_id", (site, split) if split else (site,)).fetchall()
        return [self._case_record(info, row["case_id"], row["split"]) for row in rows]

    def _case_record(self, info: SiteInfo, case_id: str, split: str) -> CaseRecord:
        if info.purged:
            return CaseRecord(info.name, case_id, split, None, None)
        case_dir = self._sites_dir / info.name / case_id
        return CaseRecord(info.name, case_id, split, case_dir / IMAGE_FILE, case_dir / LABEL_FILE)

    def purge_site(self, name: str) -> SiteInfo:
        """Delete a site's volumes, cached predictions and buffer samples; keep versions and metrics.

        The site is marked purged first, so no new version can store its samples; if the purge
        is interrupted, run it again.
        """
        self.site(name)
        with transaction(self._db) as conn:
            conn.execute("UPDATE sites SET purged = 1 WHERE name = ?", (name,))
        for version in self.versions():
            self._drop_buffer_samples(version.id, name)
        remove_dir(self._sites_dir / name)
        for version_predictions in self._predictions_dir.glob("*"):
            remove_dir(version_predictions / name)
        return self.site(name)

    def _drop_buffer_samples(self, version_id: int, site: str) -> None:
        path = self._version_path(version_id) / BUFFER_FILE
        if path.is_file():
            remaining = drop_sites(load_npz(path), [site])
            if remaining is not None:
                replace_npz(path, remaining)

    # ------------------------------------------------------------------ versions
    def add_version(
        self,
        *,
        parent: int | None,
        site: str,
        strategy: str,
        config: dict[str, Any],
        seed: int,
        tensors: dict[str, torch.Tensor],
        buffer: dict[str, np.ndarray] | None,
        activate: bool = True,
    ) -> VersionInfo:
        """Store a new immutable model version (ids 1, 2, ...) and, by default, make it active.

        Buffer samples of purged sites are dropped. A failure at any point leaves the store
        as it was.
        """
        config_json = _json_or_error(config, "config")
        _check_tensors(tensors)
        if buffer is not None:
            check_buffer(buffer)
        temp = new_temp_dir(self._models_dir)
        try:
            write_version_files(temp, tensors, config, buffer)
            with transaction(self._db) as conn:
                check_lineage(conn, parent, site)
                if buffer is not None:
                    _drop_purged_samples(conn, temp / BUFFER_FILE, buffer)
                version_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM versions").fetchone()[0]
                conn.execute(
                    "INSERT INTO versions (id, parent, site, strategy, config, seed, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (version_id, parent, site, strategy, config_json, seed, now_iso()),
                )
                if activate:
                    set_active(conn, version_id)
                move_into_place(temp, self._version_path(version_id))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return self.version(version_id)

    def versions(self) -> list[VersionInfo]:
        """All model versions by id."""
        with connect(self._db) as conn:
            rows = conn.execute(VERSION_QUERY.format(where="")).fetchall()
        return [version_info(row) for row in rows]

    def version(self, version_id: int) -> VersionInfo:
        """One model version; :class:`StoreError` if it does not exist."""
        with connect(self._db) as conn:
            row = conn.execute(VERSION_QUERY.format(where="WHERE v.id = ?"), (version_id,)).fetchone()
        if row is None:
            known = ", ".join(str(version.id) for version in self.versions()) or "none"
            raise StoreError(f"unknown model version {version_id!r}; known versions: {known}")
        return version_info(row)

    def active_version(self) -> VersionInfo | None:
        """The version used for prediction and as the parent of the next update."""
        with connect(self._db) as conn:
            row = conn.execute(VERSION_QUERY.format(where="WHERE v.id = a.version")).fetchone()
        return None if row is None else version_info(row)

    def activate(self, version_id: int) -> VersionInfo:
        """Make ``version_id`` the active version (a rollback when it is an older one)."""
        self.version(version_id)
        with transaction(self._db) as conn:
            set_active(conn, version_id)
        return self.version(version_id)

    def version_dir(self, version_id: int) -> Path:
        """The folder of a stored version (weights, config, buffer)."""
        self.version(version_id)
        return self._version_path(version_id)

    def _version_path(self, version_id: int) -> Path:
        return self._models_dir / str(int(version_id))

    def load_tensors(self, version_id: int) -> dict[str, torch.Tensor]:
        """The weights of a version as CPU tensors (safetensors, never unpickled)."""
        from safetensors.torch import load_file

        return load_file(str(self.version_dir(version_id) / WEIGHTS_FILE))

    def load_buffer(self, version_id: int) -> dict[str, np.ndarray] | None:
        """The replay buffer of a version, or ``None`` if it was stored without one."""
        path = self.version_dir(version_id) / BUFFER_FILE
        return load_npz(path) if path.is_file() else None

    # ------------------------------------------------------------------ evaluations
    def record_evaluations(self, records: list[EvaluationRecord]) -> None:
        """Insert or replace per-case evaluations, all in one transaction."""
        with transaction(self._db) as conn:
            for record in records:
                upsert_evaluation(conn, record)

    def evaluations(self, version: int | None = None, site: str | None = None) -> list[EvaluationRecord]:
        """Stored evaluations, optionally of one version and/or one site."""
        return self._query_evaluations(version, site, audit_only=False)

    def _query_evaluations(
        self, version: int | None, site: str | None, audit_only: bool
    ) -> list[EvaluationRecord]:
        conditions = {"e.version = ?": version, "e.site = ?": site}
        clauses = [clause for clause, value in conditions.items() if value is not None]
        clauses.append("c.split = 'audit'" if audit_only else "1")
        params = [value for value in conditions.values() if value is not None]
        with connect(self._db) as conn:
            rows = conn.execute(EVALUATION_QUERY.format(where=" AND ".join(clauses)), params).fetchall()
        return [
            EvaluationRecord(
                row["version"], row["site"], row["case_id"], load_json(row["dice"]), load_json(row["hd95"])
            )
            for row in rows
        ]

    def _background_names(self) -> set[str]:
        return {name for name, value in (self.label_names or {}).items() if value == 0}

    def site_dice(self, version: int, site: str) -> float | None:
        """Mean over the site's audit cases of the mean foreground Dice; ``None`` if not evaluated."""
        records = self._query_evaluations(version, site, audit_only=True)
        return site_means(records, self._background_names()).get((version, site))

    def dice_matrix(self) -> tuple[list[int], list[str], list[list[float | None]]]:
        """(version ids, site names, Dice[version][site]) with ``None`` where not evaluated."""
        version_ids = [version.id for version in self.versions()]
        site_names = [site.name for site in self.sites()]
        means = site_means(self._query_evaluations(None, None, audit_only=True), self._background_names())
        return version_ids, site_names, _matrix(means, version_ids, site_names)

    def class_dice_matrix(self) -> dict[str, list[list[float | None]]]:
        """Per foreground label name, the Dice[version][site] matrix laid out as :meth:`dice_matrix`."""
        version_ids = [version.id for version in self.versions()]
        site_names = [site.name for site in self.sites()]
        records = self._query_evaluations(None, None, audit_only=True)
        means = class_site_means(records, self._background_names())
        foreground = [name for name, value in (self.label_names or {}).items() if value != 0]
        matrices = {}
        for label in foreground:
            label_means = {(v, s): mean for (name, v, s), mean in means.items() if name == label}
            matrices[label] = _matrix(label_means, version_ids, site_names)
        return matrices

    def prediction_path(self, version: int, site: str, case_id: str) -> Path:
        """Where the cached prediction of ``version`` for an audit case lives (may not exist yet)."""
        validate_name(site, "site")
        validate_name(case_id, "case")
        return self._predictions_dir / str(int(version)) / site / f"{case_id}.nii.gz"

    # ------------------------------------------------------------------ jobs
    def create_job(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Register a new job in state ``"queued"``."""
        params_json = _json_or_error(params, "job params")
        job_id = uuid.uuid4().hex[:12]
        created = now_iso()
        with transaction(self._db) as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, state, params, created, updated) "
                "VALUES (?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, params_json, created, created),
            )
        return self.job(job_id)

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        """Set any of ``state``, ``error``, ``result`` and ``pid`` of a job; bumps ``updated``."""
        unknown = sorted(set(fields) - set(_JOB_FIELDS))
        if unknown:
            raise TypeError(f"update_job got unknown fields {unknown}; allowed: {', '.join(_JOB_FIELDS)}")
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise StoreError(
                f"unknown job state {fields['state']!r}. Fix: use one of {', '.join(JOB_STATES)}"
            )
        if fields.get("result") is not None:
            fields["result"] = _json_or_error(fields["result"], "job result")
        assignments = ", ".join([*(f"{name} = ?" for name in fields), "updated = ?"])
        with transaction(self._db) as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), now_iso(), job_id)
            )
            if cursor.rowcount == 0:
                raise _unknown_job(job_id)
        return self.job(job_id)

    def job(self, job_id: str) -> JobRecord:
        """One job; :class:`StoreError` if it does not exist."""
        with connect(self._db) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _unknown_job(job_id)
        return job_record(row)

    def jobs(self) -> list[JobRecord]:
        """All jobs, newest first."""
        with connect(self._db) as conn:
            rows = conn.execute("SELECT * FROM jobs ORDER BY seq DESC").fetchall()
        return [job_record(row) for row in rows]

    def job_dir(self, job_id: str) -> Path:
        """The working folder of a job (logs, events, checkpoints), created on first use."""
        self.job(job_id)
        folder = self.path / "jobs" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _check_tensors(tensors: dict[str, torch.Tensor]) -> None:
    import torch

    if not tensors or not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        raise StoreError("tensors must be a non-empty dict of torch.Tensor. Fix: pass model.state_dict()")


def _drop_purged_samples(conn: sqlite3.Connection, path: Path, buffer: dict[str, np.ndarray]) -> None:
    """Rewrite the buffer file at ``path`` without samples of sites purged meanwhile."""
    remaining = drop_sites(buffer, purged_sites(conn))
    if remaining is not None:
        replace_npz(path, remaining)


def _matrix(
    means: dict[tuple[int, str], float], version_ids: list[int], site_names: list[str]
) -> list[list[float | None]]:
    return [[means.get((version, site)) for site in site_names] for version in version_ids]


def _json_or_error(value: Any, what: str) -> str:
    try:
        return dump_json(value)
    except (TypeError, ValueError) as error:
        raise StoreError(
            f"{what} cannot be stored as JSON ({error}). "
            "Fix: use only dicts, lists, strings, numbers and None"
        ) from error


def _unknown_job(job_id: str) -> StoreError:
    return StoreError(f"unknown job {job_id!r}. Fix: use a job id listed by this store")
