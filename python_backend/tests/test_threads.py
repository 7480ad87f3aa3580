"""Torch thread counts: --threads and job settings win, OMP_NUM_THREADS is respected, cores are shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dakr.service.jobs as jobs_module
from dakr.service.jobs import JobRunner
from dakr.store import Store
from dakr.threads import torch_threads, usable_cores, use_torch_threads


def test_requested_threads_win_over_everything() -> None:
    assert torch_threads(3, concurrent=4, environ={"OMP_NUM_THREADS": "2"}) == 3


def test_omp_num_threads_is_respected_when_set() -> None:
    assert torch_threads(None, concurrent=1, environ={"OMP_NUM_THREADS": "1"}) == 1
    assert torch_threads(None, environ={"OMP_NUM_THREADS": " 5 "}) == 5


@pytest.mark.parametrize("junk", ["", "0", "-2", "many"])
def test_invalid_omp_num_threads_falls_back_to_the_cores(junk: str) -> None:
    assert torch_threads(None, environ={"OMP_NUM_THREADS": junk}) == usable_cores()


def test_cores_are_divided_among_concurrent_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dakr.threads.usable_cores", lambda: 8)
    assert [torch_threads(None, concurrent=n, environ={}) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_usable_cores_follow_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_zero_threads_is_refused_with_a_fix() -> None:
    with pytest.raises(ValueError, match="--threads 1"):
        torch_threads(0)


def test_use_torch_threads_sets_torch() -> None:
    before = torch.get_num_threads()
    try:
        assert use_torch_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_service_shares_cores_among_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread count reaches each worker's command line; a job's own ``threads`` wins."""
    monkeypatch.setattr("dakr.threads.usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    commands: list[list[str]] = []
    real_command = jobs_module.worker_command

    def sleeper(store_path: Path, job_id: str, threads: int) -> list[str]:
        commands.append(real_command(store_path, job_id, threads))
        return [sys.executable, "-c", "import time; time.sleep(30)", job_id]

    monkeypatch.setattr(jobs_module, "worker_command", sleeper)
    store = Store.init(tmp_path / "store")
    runner = JobRunner(store, store.path, max_evaluations=2)
    try:
        runner.submit("evaluate", {"version": 1})
        runner.submit("evaluate", {"version": 2})
        runner.submit("adapt", {"site": "A", "strategy": "dakr", "config": {}, "threads": 3})
    finally:
        for job in store.jobs():
            if job.pid:
                jobs_module.processes.kill(job.pid)
    assert [command[command.index("--threads") + 1] for command in commands] == ["4", "2", "3"]


def test_the_worker_applies_the_thread_count_it_is_given(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    job = store.create_job("evaluate", {"version": 7})
    done = subprocess.run(jobs_module.worker_command(store.path, job.id, 3), capture_output=True, text=True, timeout=300)
    assert "3 torch threads" in done.stderr, done.stderr
