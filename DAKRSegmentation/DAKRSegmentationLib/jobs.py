"""Following a backend job: incremental progress events, a one-line status and the final state.

:class:`JobMonitor` does one short round of requests per :meth:`JobMonitor.poll`; the Slicer
widget calls it from a ``QTimer`` (the GUI never waits on training), tests and the in-Slicer
self-test call :meth:`JobMonitor.wait`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .client import BackendClient

FINISHED_STATES = ("succeeded", "failed", "cancelled", "interrupted")
#: States from which the backend can resume a job.
RESUMABLE_STATES = ("interrupted", "cancelled")


@dataclass
class JobUpdate:
    """What changed since the previous poll."""

    job_id: str
    state: str
    #: New progress events (API dicts), oldest first.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The latest event seen so far (``None`` before the first one).
    latest: dict[str, Any] | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES

    @property
    def percent(self) -> int | None:
        """Progress of the current stage in percent, ``None`` when unknown."""
        if self.state == "succeeded":
            return 100
        if not self.latest or not self.latest.get("total"):
            return None
        return max(0, min(100, round(100 * self.latest.get("step", 0) / self.latest["total"])))

    @property
    def status_text(self) -> str:
        """One line for the progress label: state, stage, epoch, step, ETA."""
        if self.state == "succeeded":
            result = self.result or {}
            if result.get("active") is False:
                return f"Finished: {result.get('activation')}"
            version = result.get("version")
            return f"Finished: version {version} is active." if version is not None else "Finished."
        if self.state == "failed":
            return f"Failed: {self.error or 'see the log'}"
        if self.state == "cancelled":
            return "Cancelled. Resume continues from the last checkpoint."
        if self.state == "interrupted":
            return "Interrupted (the backend stopped). Resume continues from the last checkpoint."
        if self.latest is None:
            return "Waiting for the backend to start the job..." if self.state == "queued" else "Starting..."
        return format_event(self.latest)


def format_seconds(seconds: float) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def format_event(event: dict[str, Any]) -> str:
    """A progress event as ``stage · epoch e/E · step s/S · loss terms · ETA m:ss · message``."""
    parts = [str(event.get("stage", ""))]
    if event.get("epochs"):
        parts.append(f"epoch {event.get('epoch', 0)}/{event['epochs']}")
    if event.get("total"):
        parts.append(f"step {event.get('step', 0)}/{event['total']}")
    losses = event.get("losses") or {}
    if losses:
        parts.append(" ".join(f"{name} {value:.3f}" for name, value in losses.items()))
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_seconds(event['eta_s'])}")
    if event.get("message"):
        parts.append(str(event["message"]))
    return " · ".join(part for part in parts if part)


class JobMonitor:
    """Follows one job of a backend; each :meth:`poll` fetches only new events."""

    def __init__(self, client: BackendClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.next_event = 0
        self.latest: dict[str, Any] | None = None
        self.state = "queued"

    def poll(self) -> JobUpdate:
        """New events and the current state of the job (two short requests)."""
        events, self.next_event = self.client.job_events(self.job_id, self.next_event)
        if events:
            self.latest = events[-1]
        job = self.client.job(self.job_id)
        self.state = job["state"]
        if self.latest is None and job.get("progress"):
            self.latest = job["progress"]
        return JobUpdate(self.job_id, self.state, events, self.latest, job.get("error"), job.get("result"))

    def wait(self, timeout_s: float, interval_s: float = 0.5,
             on_update: Callable[[JobUpdate], None] | None = None) -> JobUpdate:
        """Poll until the job finishes (blocking; for tests and scripts). Raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while True:
            update = self.poll()
            if on_update is not None:
                on_update(update)
            if update.finished:
                return update
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {update.state} after {timeout_s:.0f} s")
            time.sleep(interval_s)
