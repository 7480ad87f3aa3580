"""The files of a job inside ``store.job_dir(id)``: progress events, worker log and work folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dakr.progress import ProgressEvent

#: JSON-lines progress events written by the worker (:class:`dakr.progress.JsonLinesProgress`).
EVENTS_FILE = "events.jsonl"
#: The worker's stdout and stderr.
LOG_FILE = "worker.log"
#: Checkpoints and other working files of the pipeline; kept for resume.
WORK_DIR = "work"
#: One line per worker start; a job started before is resumed from its checkpoint.
ATTEMPTS_FILE = "attempts"

_BLOCK = 64 * 1024


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (empty when the file does not exist yet)."""
    if count <= 0 or not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def last_event(path: Path) -> ProgressEvent | None:
    """The newest complete progress event of a job, or ``None`` before the first one."""
    for line in reversed(tail_lines(path, 4)):
        try:
            return ProgressEvent.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
    return None
