"""What every route needs: the store, the job runner and the server settings, plus 404 lookups."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request, status

from dakr.service import processes
from dakr.service.jobs import JobRunner
from dakr.service.security import safe_name
from dakr.store import CaseRecord, JobRecord, SiteInfo, Store, StoreError, VersionInfo
from dakr.store.files import TEMP_PREFIX


@dataclass
class ServiceContext:
    """State shared by the routes of one app."""

    store: Store
    runner: JobRunner
    #: The server only listens on this machine; server-side paths may then be registered.
    loopback: bool
    #: Adapt jobs whose settings need more memory than this are refused (:mod:`dakr.memory_budget`).
    max_job_memory_bytes: int
    #: Held while the server process itself runs a network (predictions), so requests never stack torch work.
    torch_work: threading.Lock = field(default_factory=threading.Lock)


def public_message(store: Store, text: str) -> str:
    """``text`` with the store's absolute path replaced by its folder name (for remote clients)."""
    return text.replace(str(store.path), store.name)


def temp_folder(store: Store) -> Path:
    """A new folder in the store's temp area (same disk as the store); delete it when done."""
    folder = store.temp_name()
    folder.mkdir()
    return folder


def clean_temp_area(store: Store) -> None:
    """Delete what dead processes left in the store's temp area (a server or worker that was killed)."""
    if not store.temp_path.is_dir():
        return
    for entry in store.temp_path.iterdir():
        owner = entry.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if owner.isdigit() and processes.pid_running(int(owner)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def get_context(request: Request) -> ServiceContext:
    """FastAPI dependency: the app's :class:`ServiceContext`."""
    return request.app.state.context


def not_found(exc: StoreError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


def site_or_404(store: Store, name: str) -> SiteInfo:
    """A registered site (400 for an invalid name, 404 for an unknown one)."""
    safe_name(name, "site")
    try:
        return store.site(name)
    except StoreError as exc:
        raise not_found(exc) from exc


def case_or_404(store: Store, site: str, case_id: str, *, need_files: bool = True) -> CaseRecord:
    """A case of a site (400 invalid names, 404 unknown, 410 purged when ``need_files``)."""
    info = site_or_404(store, site)
    safe_name(case_id, "case")
    record = next((case for case in store.cases(site) if case.case_id == case_id), None)
    if record is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"site {site!r} has no case {case_id!r}; GET /api/v1/sites/{site}/cases lists them"
        )
    if need_files and info.purged:
        raise HTTPException(status.HTTP_410_GONE, f"site {site!r} was purged; its volumes are no longer stored")
    return record


def version_or_404(store: Store, version_id: int) -> VersionInfo:
    """A stored model version (404 naming the known ones otherwise)."""
    try:
        return store.version(version_id)
    except StoreError as exc:
        raise not_found(exc) from exc


def active_or_409(store: Store) -> VersionInfo:
    """The active model version; 409 while the store has none."""
    active = store.active_version()
    if active is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "there is no model yet: register a site and run an adapt job first")
    return active


def version_or_active(store: Store, version_id: int | None) -> int:
    """``version_id`` if it exists (else 404), or the active version when it is ``None`` (409 if none)."""
    return version_or_404(store, version_id).id if version_id is not None else active_or_409(store).id


def job_or_404(store: Store, job_id: str) -> JobRecord:
    """A job (404 for an unknown id)."""
    try:
        return store.job(job_id)
    except StoreError as exc:
        raise not_found(exc) from exc
