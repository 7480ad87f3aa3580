"""The job runner: each job runs in its own worker subprocess, watched by a monitor thread.

A worker is ``python -m dakr worker STORE JOB_ID`` in a new process group, so neither a crash
nor a cancel of a job can take the server down. The worker records its own outcome in the
store; the runner only steps in when a worker vanished without one (killed, crashed, or the
server itself restarted), marking the job ``interrupted``, ``failed`` or ``cancelled``.

One training job runs at a time; evaluate jobs run in a bounded pool (``max_evaluations``
workers, default 1) and the rest wait, ``queued``, without a process. Across processes the
store's writer lock serialises every worker with the CLI and other servers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from dakr.service import processes
from dakr.service.failures import EXIT_STORAGE_FAILED
from dakr.service.job_files import LOG_FILE
from dakr.store import Store
from dakr.store.records import JobRecord
from dakr.threads import torch_threads

log = logging.getLogger(__name__)

#: Job kinds that train; only one of them may run at a time.
TRAINING_KINDS = frozenset({"adapt"})
#: Job kinds that run in the bounded pool of evaluation workers.
POOLED_KINDS = frozenset({"evaluate"})
#: Evaluation workers that may run at once by default.
DEFAULT_MAX_EVALUATIONS = 1
#: States of a job whose worker is (or should be) alive.
ACTIVE_STATES = ("queued", "running")
#: States from which ``resume`` starts a new worker on the same job.
RESUMABLE_STATES = ("interrupted", "cancelled")


class JobConflict(Exception):
    """A job is in the way of the request (HTTP 409); ``job_id`` names it."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobStateError(JobConflict):
    """The job's state does not allow the request, e.g. cancelling a finished job (HTTP 409)."""


def worker_command(store_path: Path, job_id: str, threads: int) -> list[str]:
    """The command line of the worker process of a job that may use ``threads`` torch threads."""
    return [sys.executable, "-m", "dakr", "worker", str(store_path), job_id, "--threads", str(threads)]


class JobRunner:
    """Starts, cancels, resumes and watches the worker processes of one store's jobs.

    ``cancel_grace_s`` is how long a cancelled worker may take to checkpoint and exit before
    its process group is killed; ``poll_interval_s`` is the monitor's period;
    ``max_evaluations`` bounds the evaluation workers running at once.
    """

    def __init__(
        self,
        store: Store,
        store_path: Path,
        *,
        cancel_grace_s: float = 20.0,
        poll_interval_s: float = 0.5,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    ) -> None:
        if max_evaluations < 1:
            raise ValueError(f"max_evaluations must be at least 1, got {max_evaluations}")
        self.store = store
        self.store_path = store_path
        self.cancel_grace_s = cancel_grace_s
        self.poll_interval_s = poll_interval_s
        self.max_evaluations = max_evaluations
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._pooled: set[str] = set()
        self._pending: deque[str] = deque()
        self._exit_codes: dict[str, int] = {}
        self._cancel_requested: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Mark jobs whose worker died while no server watched them, then start the monitor."""
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitor, name="dakr-job-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the monitor thread. Running workers notice the server is gone and stop themselves."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _monitor(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check()
            except Exception:
                log.exception("job monitor pass failed; retrying")

    # -- requests -----------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Create a job and start its worker; raises :class:`JobConflict` while training runs."""
        with self._lock:
            self.check()
            if kind in TRAINING_KINDS:
                self._refuse_second_training_job()
            job = self.store.create_job(kind, params)
            return self._start_or_queue(job)

    def resume(self, job_id: str) -> JobRecord:
        """Start a new worker for an interrupted or cancelled job; it continues from its checkpoint."""
        with self._lock:
            self.check()
            job = self.store.job(job_id)
            if job.state not in RESUMABLE_STATES:
                raise JobStateError(
                    f"job {job_id} is {job.state}; only interrupted or cancelled jobs can be resumed"
                    + (" (start a new job instead)" if job.state in ("failed", "succeeded") else ""),
                    job_id,
                )
            if job.kind in TRAINING_KINDS:
                self._refuse_second_training_job()
            return self._start_or_queue(self.store.update_job(job_id, state="queued", error=None, pid=None))

    def cancel(self, job_id: str) -> JobRecord:
        """Ask the job's worker to checkpoint and stop; its group is killed after the grace period."""
        with self._lock:
            job = self.store.job(job_id)
            if job.state not in ACTIVE_STATES:
                raise JobStateError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled", job_id)
            self._cancel_requested.setdefault(job_id, time.monotonic())
            if job_id in self._pending:
                self._pending.remove(job_id)
                self._finish(job, None)
            elif job.pid is not None and self._alive(job):
                processes.request_stop(job.pid)
            else:
                self._finish(job, None)
            return self.store.job(job_id)

    def running_training_job(self) -> str | None:
        """Id of the queued or running training job, if any."""
        for job in self.store.jobs():
            if job.kind in TRAINING_KINDS and job.state in ACTIVE_STATES:
                return job.id
        return None

    def stop_for_purge(self, site: str) -> None:
        """Clear the way for purging ``site``: cancel running evaluations, refuse while training runs.

        Raises :class:`JobConflict` naming an active training job (it reads every site's data).
        Evaluations still waiting for a pool slot stay queued: they start after the purge and
        skip the purged site.
        """
        with self._lock:
            self.check()
            training = self.running_training_job()
            if training is not None:
                raise JobConflict(
                    f"training job {training} is active and reads the data of every site; cancel it "
                    f"(POST /api/v1/jobs/{training}/cancel) or wait for it before purging site {site!r}",
                    training,
                )
            for job in self.store.jobs():
                if job.kind in POOLED_KINDS and job.state in ACTIVE_STATES and job.id not in self._pending:
                    log.info("cancelling evaluate job %s to purge site %s", job.id, site)
                    self.cancel(job.id)

    # -- monitoring ---------------------------------------------------------------------------
    def check(self) -> None:
        """One monitor pass: reap exited workers, escalate overdue cancels, mark vanished jobs."""
        with self._lock:
            for job_id, process in list(self._children.items()):
                code = process.poll()
                if code is None:
                    continue
                del self._children[job_id]
                self._pooled.discard(job_id)
                self._exit_codes[job_id] = code
            for job in self.store.jobs():
                if job.state not in ACTIVE_STATES:
                    self._cancel_requested.pop(job.id, None)
                    self._exit_codes.pop(job.id, None)
                elif job.id in self._pending:
                    continue
                elif job.id not in self._children and not self._alive(job):
                    self._finish(job, self._exit_codes.get(job.id))
                else:
                    self._escalate_cancel(job)
            while self._pending and len(self._pooled) < self.max_evaluations:
                self._spawn(self._pending.popleft())

    def _alive(self, job: JobRecord) -> bool:
        if job.id in self._children:
            return self._children[job.id].poll() is None
        return job.pid is not None and processes.is_worker_alive(job.pid, job.id)

    def _escalate_cancel(self, job: JobRecord) -> None:
        requested = self._cancel_requested.get(job.id)
        if requested is not None and job.pid is not None and time.monotonic() - requested > self.cancel_grace_s:
            log.warning("job %s did not stop within %.0f s of cancel; killing its worker", job.id, self.cancel_grace_s)
            processes.kill(job.pid)

    def _finish(self, job: JobRecord, exit_code: int | None) -> None:
        """Record the outcome of a job whose worker ended without recording one itself."""
        resume = f"POST /api/v1/jobs/{job.id}/resume continues it from its last checkpoint"
        if self._cancel_requested.get(job.id) is not None:
            state, error = "cancelled", f"cancelled; the worker was stopped before it could report. {resume}"
        elif exit_code == EXIT_STORAGE_FAILED:
            state = "interrupted"
            error = (
                f"writing to store {self.store.name!r} failed (a full disk or an I/O error), so the worker could not "
                f"record its outcome; GET /api/v1/jobs/{job.id}/log shows the cause. Free space, then: {resume}"
            )
        elif exit_code is None:
            state = "interrupted"
            error = f"the worker process is gone (the server or the machine stopped while the job ran). {resume}"
        elif exit_code < 0:
            state, error = "interrupted", f"the worker was killed by {_signal_name(-exit_code)}. {resume}"
        else:
            state = "failed"
            error = f"the worker exited with code {exit_code} without reporting a result; see GET /api/v1/jobs/{job.id}/log"
        self.store.update_job(job.id, state=state, error=error)
        self._cancel_requested.pop(job.id, None)
        self._exit_codes.pop(job.id, None)

    # -- internals ----------------------------------------------------------------------------
    def _refuse_second_training_job(self) -> None:
        running = self.running_training_job()
        if running is not None:
            raise JobConflict(
                f"training job {running} is still running; wait for it to finish or cancel it "
                f"(POST /api/v1/jobs/{running}/cancel) before starting another",
                running,
            )

    def _start_or_queue(self, job: JobRecord) -> JobRecord:
        """Start the job's worker, or queue it (no process yet) while the evaluation pool is full."""
        if job.kind in POOLED_KINDS and len(self._pooled) >= self.max_evaluations:
            self._pending.append(job.id)
            return job
        return self._spawn(job.id)

    def _spawn(self, job_id: str) -> JobRecord:
        self._cancel_requested.pop(job_id, None)
        job_dir = self.store.job_dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        running = sum(1 for process in self._children.values() if process.poll() is None)
        threads = torch_threads(self.store.job(job_id).params.get("threads"), concurrent=running + 1)
        with (job_dir / LOG_FILE).open("ab") as log_file:
            try:
                process = subprocess.Popen(
                    worker_command(self.store_path, job_id, threads),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    **processes.SPAWN_OPTIONS,
                )
            except OSError as exc:
                error = f"cannot start the worker process ({exc}); check the Python installation of the server"
                self.store.update_job(job_id, state="failed", error=error)
                return self.store.job(job_id)
        self._children[job_id] = process
        if self.store.job(job_id).kind in POOLED_KINDS:
            self._pooled.add(job_id)
        self.store.update_job(job_id, pid=process.pid)
        return self.store.job(job_id)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
