"""Wall time of ``dakr`` verbs that neither train nor predict (median of several runs).

Usage: ``python benchmarks/cli_startup/run.py [--repeats 5] [--out benchmarks/cli_startup/results.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dakr", *argv], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "python_backend")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "store")
        subprocess.run([sys.executable, "-m", "dakr", "init", store], env=env, check=True, capture_output=True)
        verbs = {
            "dakr --help": lambda i: ["--help"],
            "dakr init NEW_STORE": lambda i: ["init", str(Path(folder) / f"new{i}")],
            "dakr site list STORE": lambda i: ["site", "list", store],
            "dakr models STORE": lambda i: ["models", store],
            "dakr adapt --help": lambda i: ["adapt", "--help"],
        }
        for shown, argv in verbs.items():
            times = [timed(argv(i), env) for i in range(args.repeats)]
            rows.append(f"| {shown} | {statistics.median(times):.2f} |")
            print(rows[-1], flush=True)
    lines = [
        "# CLI start-up time",
        "",
        f"Command: `python benchmarks/cli_startup/run.py --repeats {args.repeats}`",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, shared with other users' processes while it ran.",
        "",
        f"| command | median wall time of {args.repeats} runs (s) |",
        "|---|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
