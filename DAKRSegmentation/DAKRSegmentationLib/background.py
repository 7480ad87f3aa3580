"""Blocking work (HTTP requests, child processes, pip) on worker threads, results back on the GUI thread.

The widget submits a call with :meth:`BackgroundTasks.submit` and a ``QTimer`` calls
:meth:`BackgroundTasks.collect` on the GUI thread, which runs each finished call's ``on_done`` (or
``on_error``) there. Nothing here touches Qt or MRML: the worker functions get plain data and a
:class:`TaskControl` for cancelling and progress text; MRML and widgets are changed only in the callbacks.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


class TaskCancelled(Exception):
    """The user cancelled a background task."""


@dataclass
class TaskControl:
    """What a worker function may use: check for cancellation and report progress."""

    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: Latest progress text and fraction (0..1, ``None``: unknown), read by the GUI.
    text: str = ""
    fraction: float | None = None

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise :class:`TaskCancelled` if the user cancelled."""
        if self.cancelled:
            raise TaskCancelled("cancelled")

    def report(self, text: str, fraction: float | None = None) -> None:
        self.text, self.fraction = text, fraction


@dataclass
class Task:
    name: str
    future: Future
    control: TaskControl
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]


class BackgroundTasks:
    """A small pool of worker threads and the tasks whose results the GUI has not collected yet."""

    def __init__(self, workers: int = 2) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="DAKRSegmentation")
        self.tasks: list[Task] = []

    def submit(self, name: str, function: Callable[[TaskControl], Any], on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None]) -> Task:
        """Run ``function(control)`` on a worker; ``on_done(result)`` or ``on_error(error)`` run in :meth:`collect`."""
        control = TaskControl()
        task = Task(name, self.executor.submit(function, control), control, on_done, on_error)
        self.tasks.append(task)
        return task

    def busy(self, name: str | None = None) -> bool:
        """Whether a task (of that name) is still pending."""
        return any(name is None or task.name == name for task in self.tasks)

    def collect(self) -> None:
        """Run the callbacks of finished tasks (call on the GUI thread)."""
        finished = [task for task in self.tasks if task.future.done()]
        self.tasks = [task for task in self.tasks if not task.future.done()]
        for task in finished:
            error = task.future.exception()
            if error is None:
                task.on_done(task.future.result())
            else:
                task.on_error(error)

    def cancel_all(self) -> None:
        for task in self.tasks:
            task.control.cancel()

    def shutdown(self) -> None:
        """Cancel what can be cancelled and let the workers end without waiting for them."""
        self.cancel_all()
        self.tasks = []
        self.executor.shutdown(wait=False, cancel_futures=True)
