"""The worker process of a job: ``dakr worker STORE JOB_ID`` runs one job to its end.

The worker calls only :mod:`dakr.pipeline` functions, whose store writes are atomic, so
killing it at any moment leaves the store consistent. It records its own outcome
(``succeeded``, ``failed``, ``cancelled`` or ``interrupted``) in the store. SIGTERM (CTRL_BREAK
on Windows) asks it to stop: training checkpoints and stops at the next step; evaluation
stops at once. If the server that started it goes away, training checkpoints and stops too,
so no orphan keeps the GPU busy; the restarted server can resume the job. A resumed adapt job
continues from its own checkpoint and recorded parent, or finishes the version it already stored
(:mod:`dakr.resume`); it never stores a second one.

A job runs while holding the store's writer lock (:mod:`dakr.store.lock`): while another
process trains, evaluates or purges in the store, the job stays ``queued`` and its progress
says whom it waits for. A full disk or an I/O error stops the job as ``interrupted`` with the
real cause in its record; if even that record cannot be written, the worker exits with
:data:`~dakr.service.failures.EXIT_STORAGE_FAILED` and the server records it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from dakr import pipeline
from dakr.governance.decisions import activation_outcome, gate_outcome
from dakr.progress import ConsoleProgress, JsonLinesProgress, ProgressCallback, ProgressEvent
from dakr.resume import has_checkpoint
from dakr.service import processes
from dakr.service.failures import EXIT_STORAGE_FAILED, storage_failure
from dakr.service.job_files import ATTEMPTS_FILE, EVENTS_FILE, WORK_DIR
from dakr.store import JobRecord, Store, StoreError
from dakr.store.lock import StoreBusy
from dakr.threads import use_torch_threads
from dakr.training import TrainingCancelled

log = logging.getLogger("dakr.worker")

#: How often the worker checks that the server that started it still runs.
PARENT_POLL_S = 1.0


class JobStopped(Exception):
    """A non-training job was asked to stop."""


class StopRequest:
    """Why the job should stop: ``"cancel"`` (SIGTERM) or ``"orphaned"`` (the server is gone).

    Training jobs are ``cooperative``: the trainer polls :meth:`is_set`, checkpoints and
    raises ``TrainingCancelled``. Other jobs raise :class:`JobStopped` from the signal handler.
    """

    def __init__(self, cooperative: bool) -> None:
        self.cooperative = cooperative
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self.reason is not None

    def install(self) -> None:
        """Handle the stop signal and watch the parent process."""
        signal.signal(signal.SIGBREAK if os.name == "nt" else signal.SIGTERM, self._on_signal)
        parent = os.getppid()
        threading.Thread(target=self._watch_parent, args=(parent,), name="dakr-parent-watch", daemon=True).start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reason = self.reason or "cancel"
        if not self.cooperative:
            raise JobStopped("stopped on request")

    def _watch_parent(self, parent: int) -> None:
        while not processes.parent_gone(parent):
            time.sleep(PARENT_POLL_S)
        log.warning("the server (pid %d) is gone; %s", parent, "checkpointing and stopping" if self.cooperative else "finishing")
        self.reason = self.reason or "orphaned"


def worker_main(store_path: str | Path, job_id: str, *, threads: int | None = None) -> int:
    """Run job ``job_id`` of the store at ``store_path`` with ``threads`` torch threads (see :mod:`dakr.threads`).

    Returns the process exit code (0 unless it failed).
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = Store.open(store_path)
        job = store.job(job_id)
    except StoreError as exc:
        log.error("%s", exc)
        return 2
    try:
        return _run_job(store, job, threads)
    except Exception as exc:
        failure = storage_failure(exc, store.name)
        if failure is None:
            raise
        log.error("job %s could not record its outcome: %s", job_id, failure.message)
        return EXIT_STORAGE_FAILED


def _run_job(store: Store, job: JobRecord, threads: int | None) -> int:
    """Wait for the store's writer lock, run the job with ``threads`` torch threads and record its outcome."""
    job_id = job.id
    job_dir = store.job_dir(job_id)
    ran_before = _record_attempt(job_dir)
    resume = has_checkpoint(job_dir / WORK_DIR)
    stop = StopRequest(cooperative=job.kind == "adapt")
    stop.install()
    store.update_job(job_id, pid=os.getpid())
    how = "resumed from its checkpoint" if resume else "started again (no checkpoint yet)" if ran_before else "started"
    torch_threads = use_torch_threads(threads)
    progress = _progress(job_dir / EVENTS_FILE)
    resume_hint = f"POST /api/v1/jobs/{job_id}/resume continues from the last checkpoint"

    def waiting(busy: StoreBusy) -> None:
        log.info("job %s waits: %s", job_id, busy)
        progress(ProgressEvent(stage="queued", message=f"waiting for the store: {busy}"))

    try:
        holder = f"dakr worker, {job.kind} job {job_id}"
        with store.writer_lock(holder, wait_s=math.inf, on_wait=waiting, should_stop=stop.is_set):
            store.update_job(job_id, state="running", error=None)
            log.info("job %s (%s) %s with params %s, %d torch threads", job_id, job.kind, how, job.params, torch_threads)
            result = _run(store, job, progress, job_dir / WORK_DIR, resume, stop)
    except (TrainingCancelled, JobStopped, StoreBusy) as exc:
        state = "interrupted" if stop.reason == "orphaned" else "cancelled"
        log.info("job %s %s: %s", job_id, state, exc)
        store.update_job(job_id, state=state, error=f"{state}: {exc}. {resume_hint}")
        return 0
    except Exception as exc:
        failure = storage_failure(exc, store.name)
        if failure is not None:
            log.exception("job %s stopped: %s", job_id, failure.message)
            store.update_job(job_id, state="interrupted", error=f"{failure.message}. {resume_hint}")
            return 0
        log.exception("job %s failed", job_id)
        store.update_job(job_id, state="failed", error=_error_message(exc, job_id))
        return 1
    store.update_job(job_id, state="succeeded", result=result, error=None)
    log.info("job %s succeeded: %s", job_id, result)
    return 0


def _run(
    store: Store, job: JobRecord, progress: ProgressCallback, work_dir: Path, resume: bool, stop: StopRequest
) -> dict[str, Any]:
    params = job.params
    if job.kind == "adapt":
        version = pipeline.adapt(
            store,
            params["site"],
            strategy=params["strategy"],
            overrides=params["config"],
            progress=progress,
            work_dir=work_dir,
            resume=resume,
            should_stop=stop.is_set,
            job_id=job.id,
            activate=params.get("activate"),
        )
        return {
            "version": version.id,
            "active": version.active,
            "activation": activation_outcome(store, version),
            "gate": gate_outcome(store, version.id),
        }
    if job.kind == "evaluate":
        dice = pipeline.evaluate_version(store, params["version"], progress=progress)
        return {"version": params["version"], "dice": {site: value for site, value in dice.items() if value is not None}}
    raise ValueError(f"unknown job kind {job.kind!r}; this worker runs 'adapt' and 'evaluate' jobs")


def _record_attempt(job_dir: Path) -> bool:
    """Count this start of the job; returns whether it ran before."""
    attempts = job_dir / ATTEMPTS_FILE
    ran_before = attempts.exists() and bool(attempts.read_text(encoding="utf-8").strip())
    with attempts.open("a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    return ran_before


def _progress(events_path: Path) -> ProgressCallback:
    """Write events to the job's events file (read by the server) and readable lines to the log."""
    events, console = JsonLinesProgress(events_path), ConsoleProgress(sys.stderr)

    def report(event: ProgressEvent) -> None:
        events(event)
        console(event)

    return report


def _error_message(exc: Exception, job_id: str) -> str:
    """User errors (bad data, config, store state) as they are; anything else with a pointer to the log."""
    if isinstance(exc, (ValueError, StoreError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}. See GET /api/v1/jobs/{job_id}/log for the traceback"
