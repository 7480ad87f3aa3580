"""Progress events: the one callback interface through which long work reports progress.

The trainer, evaluation and site registration emit :class:`ProgressEvent` objects to a
``ProgressCallback``. The CLI renders them as a progress bar, a worker process writes them as
JSON lines that the HTTP service streams to the Slicer module.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

ProgressCallback = Callable[["ProgressEvent"], None]


@dataclass
class ProgressEvent:
    """One progress report.

    ``stage`` names the phase (``"train"``, ``"evaluate"``, ``"buffer"``, ...); ``step`` and
    ``total`` count units of work within it (optimiser steps for training).
    """

    stage: str
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    #: Samples per second during training.
    throughput: float = 0.0
    #: Estimated seconds until the stage ends.
    eta_s: float | None = None
    message: str = ""
    #: End-of-stage measurements of a strategy (``stage="diagnostics"``), see ``Strategy.stage_diagnostics``.
    diagnostics: dict[str, float] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProgressEvent":
        return cls(**data)


def null_progress(event: ProgressEvent) -> None:
    """A callback that ignores every event."""


class JsonLinesProgress:
    """Append each event as one JSON line to a file (read by the service while a job runs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: ProgressEvent) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event.to_dict()) + "\n")
            handle.flush()


def read_events(path: str | Path, since: int = 0) -> list[ProgressEvent]:
    """Events of a JSON-lines progress file from index ``since`` on; a torn last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines()[since:]:
        try:
            events.append(ProgressEvent.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            break
    return events


class ConsoleProgress:
    """Render events as a single-line progress bar on a terminal (plain lines when not a TTY)."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self._last_plain = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        line = format_event(event, self.width)
        if self.stream.isatty():
            end = "\n" if event.total and event.step >= event.total else ""
            self.stream.write("\r\033[K" + line + end)
        else:
            finished = event.total and event.step >= event.total
            if not finished and event.time - self._last_plain < 5.0 and event.step:
                return
            self._last_plain = event.time
            self.stream.write(line + "\n")
        self.stream.flush()


def format_event(event: ProgressEvent, width: int = 28) -> str:
    """A one-line, human readable rendering of an event."""
    parts = [f"[{event.stage}]"]
    if event.total:
        filled = int(width * min(event.step, event.total) / event.total)
        parts.append("[" + "#" * filled + "." * (width - filled) + f"] {event.step}/{event.total}")
    if event.epochs:
        parts.append(f"epoch {event.epoch}/{event.epochs}")
    if event.losses:
        parts.append(" ".join(f"{k}={v:.3f}" for k, v in event.losses.items()))
    if event.throughput:
        parts.append(f"{event.throughput:.1f} samples/s")
    if event.eta_s is not None:
        parts.append(f"ETA {format_seconds(event.eta_s)}")
    if event.diagnostics:
        parts.append(" ".join(f"{k}={v:.3f}" for k, v in event.diagnostics.items()))
    if event.message:
        parts.append(event.message)
    return " ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"
