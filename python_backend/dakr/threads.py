"""How many threads torch may use in this process: the cores it may run on, shared fairly.

torch's default (one intra-op thread per core of the machine) oversubscribes the CPU as soon as a
second busy process (Slicer, the server, another job) runs beside it, which slows training and
evaluation several-fold. Every process that trains, evaluates or predicts therefore sets its
thread count from :func:`torch_threads`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Environment variable that, when set, fixes the thread count of every OpenMP/torch process.
OMP_ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def torch_threads(requested: int | None = None, *, concurrent: int = 1, environ: Mapping[str, str] | None = None) -> int:
    """Intra-op threads for one torch process.

    ``requested`` (``--threads N`` or a job's ``threads``) wins; otherwise a valid
    ``OMP_NUM_THREADS`` is respected; otherwise the usable cores are divided among the
    ``concurrent`` torch processes running at the same time (at least one thread each).
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}. Fix: pass a positive number such as --threads 1")
        return requested
    env = os.environ if environ is None else environ
    omp = env.get(OMP_ENV, "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    return max(1, usable_cores() // max(1, concurrent))


def use_torch_threads(requested: int | None = None, *, concurrent: int = 1) -> int:
    """Set torch's intra-op thread count for this process (see :func:`torch_threads`); returns it."""
    import torch

    count = torch_threads(requested, concurrent=concurrent)
    torch.set_num_threads(count)
    return count
