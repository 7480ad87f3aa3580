"""Distributed data-parallel training: ``dakr adapt ... --nproc N`` through ``torchrun``.

The same training code runs in every process; the trainer wraps the network in
``DistributedDataParallel`` when a process group exists (gloo on CPU, NCCL on GPUs), each rank
draws its own batches, and only rank 0 writes checkpoints and the new version to the store.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys

import torch
import torch.distributed as dist


def launch(args: argparse.Namespace) -> int:
    """Re-run this ``dakr adapt`` command under ``torchrun`` with ``args.nproc`` processes."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
        "-m", "dakr", "adapt", args.store, "--site", args.site, "--strategy", args.strategy,
    ]
    if args.config:
        command += ["--config", args.config]
    for text in args.set or []:
        command += ["--set", text]
    if args.work_dir:
        command += ["--work-dir", args.work_dir]
    if args.resume:
        command.append("--resume")
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.activate:
        command += ["--activate", args.activate]
    return subprocess.call(command)


def init_from_environment() -> torch.device | None:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns this rank's device, or ``None`` when the process was not started by a launcher
    with more than one process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def wait_for_all_ranks() -> None:
    """Block until every rank got here (no-op without a process group).

    Called when training ends, so that no rank leaves while another still has a collective or
    its last checkpoint in flight.
    """
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op without one).

    Wrappers that still hold the group (``DistributedDataParallel``'s reducer) are collected
    first: gloo aborts the process when such an object is freed during interpreter shutdown.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
