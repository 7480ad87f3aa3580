"""Training throughput with and without a second torch process, before and after ``dakr.threads``.

Each scenario trains a small DynUNet (the network of ``dakr adapt``) for a fixed wall time and
counts samples per second. "before" leaves torch at its default thread count; "after" sets it
with :func:`dakr.threads.torch_threads`, dividing the usable cores among the concurrent
processes, as the service does for its workers (with nothing else to share, that is every usable
core, the same as torch's default). The competing load is a second process running the same
training, as when the service evaluates while a job trains.

Usage: ``python benchmarks/threads/run.py [--seconds 15] [--out benchmarks/threads/results.md]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")


def train_for(seconds: float, threads: int | None, queue: multiprocessing.Queue) -> None:
    """Train for ``seconds`` (after one warm-up step) and put (threads used, samples per second) on ``queue``."""
    import torch

    from dakr.config import NetConfig
    from dakr.nets.factory import build_network

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_network(NetConfig(filters=(8, 16, 32), patch_size=(64, 64)), num_classes=3)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(8, 1, 64, 64), torch.randint(0, 3, (8, 64, 64))

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    step()
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        samples += images.shape[0]
    queue.put((torch.get_num_threads(), samples / (time.perf_counter() - start)))


def scenario(processes: int, threads: int | None, seconds: float) -> list[tuple[int, float]]:
    """Run ``processes`` trainings at once; their (threads, samples/s)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=train_for, args=(seconds, threads, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return results


def main() -> None:
    from dakr.threads import torch_threads, usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="training time per process and scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cores = usable_cores()
    rows = []
    load_average = os.getloadavg()[0]
    for load, processes in (("none from the benchmark", 1), ("a second training process", 2)):
        settings = [("before: torch default", None), ("after: dakr.threads", torch_threads(concurrent=processes))]
        if processes == 1:
            settings.append(("reference: one thread", 1))
        for label, threads in settings:
            results = scenario(processes, threads, args.seconds)
            used, rate = results[0]
            total = sum(r for _, r in results)
            rows.append(f"| {load} | {label} | {used} | {rate:.1f} | {total:.1f} |")
            print(rows[-1], flush=True)
    lines = [
        "# Training throughput and torch threads",
        "",
        f"Command: `PYTHONPATH=python_backend python benchmarks/threads/run.py --seconds {args.seconds:g}`",
        f"Machine: {platform.machine()}, {cores} usable cores, shared with other users' processes while it ran "
        f"(1-minute load average {load_average:.1f} at the start; numbers vary from run to run, compare rows of one run).",
        "Workload: DynUNet filters (8, 16, 32), 2D patches 64x64, batch 8, AdamW; "
        f"{args.seconds:g} s of training per process and scenario.",
        "",
        "| competing load (besides other users') | threads setting | threads per process | samples/s (measured process) | samples/s (all processes) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
