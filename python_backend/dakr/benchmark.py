"""``dakr benchmark``: every strategy on the same demo site sequence, with the same seeds.

Each (strategy, buffer budget, seed) run builds its own store, trains the base model on the
first site and adapts site by site, then reads the accuracy matrix R from the store. Runs are
executed one at a time in a fresh child process so that ``peak_rss_mb`` is the run's own and the
step time of every strategy is measured on the same machine in the same benchmark. The results
go to ``OUT/results.json``, a Markdown table and PNG plots.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dakr.config import ExperimentConfig, apply_overrides
from dakr.continual.strategies import MAIN_STRATEGIES, get_strategy
from dakr.evaluation.continual_metrics import acc, bwt, forgetting, fwt
from dakr.progress import ProgressEvent, format_event

#: Interleaved timing rounds per strategy, steps per round, and steps discarded as warm-up.
TIMING_ROUNDS = 3
TIMING_STEPS = 30
TIMING_WARMUP = 5


@dataclass
class BenchmarkConfig:
    """What a benchmark runs; stored verbatim in ``results.json``."""

    name: str
    #: Demo data parameters (see :func:`dakr.demo.build_demo_data`).
    demo: dict[str, Any]
    #: Experiment config overrides shared by every run (dotted keys).
    overrides: dict[str, Any]
    strategies: list[str] = field(default_factory=lambda: list(MAIN_STRATEGIES))
    seeds: int = 2
    #: Buffer budgets in samples; the first is the main one, the others are reported as ``name@buffer=N``.
    buffer_budgets: list[int] = field(default_factory=lambda: [64, 16])
    #: Strategies also run at the non-main budgets.
    budget_strategies: list[str] = field(default_factory=lambda: ["replay", "dakr"])
    #: Also run ``replay`` with as many steps as fit in ``dakr``'s measured wall-clock time.
    matched_compute: bool = True
    #: Runs executed at the same time (1 on a CPU; several share a large GPU).
    workers: int = 1

    @classmethod
    def load(cls, name_or_path: str) -> "BenchmarkConfig":
        """``quick``, ``full`` (shipped with the package) or a path to a JSON file."""
        path = Path(name_or_path)
        if not path.exists():
            path = Path(str(resources.files("dakr") / "configs" / f"benchmark_{name_or_path}.json"))
        if not path.exists():
            raise ValueError(f"unknown benchmark config {name_or_path!r}. Fix: use quick, full or a JSON file path")
        return cls(**json.loads(path.read_text()))


@dataclass
class RunSpec:
    """One benchmark run: a strategy chain over every site with one seed and one buffer budget."""

    strategy: str
    seed: int
    buffer_samples: int
    data_dir: str
    sites: list[str]
    store_dir: str
    overrides: dict[str, Any]
    label: str


def run_benchmark(
    config_name: str, out: Path, *, strategies: list[str] | None = None, seeds: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md`` and plots into ``out``."""
    from dakr.demo import build_demo_data

    config = BenchmarkConfig.load(config_name)
    if strategies:
        config.strategies = list(strategies)
    if seeds:
        config.seeds = seeds
    if workers:
        config.workers = workers
    for name in {*config.strategies, *config.budget_strategies}:
        get_strategy(name)
    out.mkdir(parents=True, exist_ok=True)
    site_dirs = build_demo_data(out / "data", **config.demo)
    runs: dict[str, list[dict[str, Any]]] = {}
    main_budget = config.buffer_budgets[0]
    plan = [(name, main_budget, name) for name in config.strategies]
    plan += [
        (name, budget, f"{name}@buffer={budget}")
        for budget in config.buffer_budgets[1:]
        for name in config.budget_strategies
        if name in config.strategies
    ]
    specs = [
        _spec(config, strategy, budget, seed, site_dirs, out, label, {})
        for strategy, budget, label in plan
        for seed in range(config.seeds)
    ]
    for spec, result in zip(specs, _execute(specs, config.workers)):
        runs.setdefault(spec.label, []).append(result)
    timed = sorted({spec.strategy for spec in specs})
    reference_store = next(spec.store_dir for spec in specs if spec.seed == 0 and spec.label == plan[0][2])
    step_seconds = _in_child(measure_step_seconds, reference_store, site_dirs[1].name, config.overrides, timed)
    if config.matched_compute and {"dakr", "replay"} <= set(config.strategies):
        steps = apply_overrides(ExperimentConfig(), config.overrides).train.steps_per_epoch
        matched_steps = max(1, round(steps * step_seconds["dakr"] / step_seconds["replay"]))
        matched = [
            _spec(config, "replay", main_budget, seed, site_dirs, out, "replay-matched", {"train.steps_per_epoch": matched_steps})
            for seed in range(config.seeds)
        ]
        runs["replay-matched"] = _execute(matched, config.workers)
        step_seconds["replay-matched"] = step_seconds["replay"]
    results = {
        "config": asdict(config),
        "sites": [d.name for d in site_dirs],
        "device": runs[plan[0][2]][0]["device"],
        "fwt_reference": "b_j = Dice of the stage-1 (base) model of the same run on site j",
        "step_timing": f"median seconds per optimiser step at stage 2 ({TIMING_ROUNDS} interleaved rounds of "
        f"{TIMING_STEPS} steps per strategy, one process, same data, previous network and buffer)",
        "strategies": {
            label: _aggregate(label_runs, step_seconds[label.split("@")[0]]) for label, label_runs in runs.items()
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from dakr.evaluation.benchmark_report import write_benchmark_outputs

    write_benchmark_outputs(results, out)
    return results


def _spec(config: BenchmarkConfig, strategy: str, budget: int, seed: int, site_dirs: list[Path], out: Path, label: str, extra: dict[str, Any]) -> RunSpec:
    overrides = {**config.overrides, "train.seed": seed, "continual.buffer_samples": budget, **extra}
    store_dir = out / "runs" / f"{label.replace('@', '_').replace('=', '')}-seed{seed}"
    return RunSpec(strategy, seed, budget, str(site_dirs[0].parent), [d.name for d in site_dirs], str(store_dir), overrides, label)


def _execute(specs: list[RunSpec], workers: int) -> list[dict[str, Any]]:
    """Run each chain in a fresh child process (own memory peak, own torch state), ``workers`` at a time."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        return list(pool.map(run_chain, specs))


def _in_child(function: Any, *args: Any) -> Any:
    """Run ``function(*args)`` alone in a fresh child process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def measure_step_seconds(store_dir: str, site: str, overrides: dict[str, Any], strategies: list[str]) -> dict[str, float]:
    """Median seconds per training step of each strategy, measured in interleaved rounds.

    Every strategy trains stage 2 of the same chain (the stored base model as the current and
    the previous network, its buffer, the second site's data) for :data:`TIMING_STEPS` steps per
    round; the rounds alternate strategies so that drifts of the machine hit all of them alike.
    """
    import copy

    import torch

    from dakr.continual.buffer import ReplayBuffer
    from dakr.inference import default_device
    from dakr.pipeline import build_model, label_values, training_sampler
    from dakr.store import Store
    from dakr.training import StageContext, Trainer

    store = Store.open(store_dir)
    base = store.versions()[0]
    config = apply_overrides(
        ExperimentConfig.from_dict(base.config), {"train.epochs": 1, "train.steps_per_epoch": TIMING_STEPS}
    )
    values = label_values(store)
    device = default_device()
    sampler = training_sampler(store, [site], config, values)
    buffer = ReplayBuffer.from_arrays(store.load_buffer(base.id))
    tensors = store.load_tensors(base.id)
    durations: dict[str, list[float]] = {name: [] for name in strategies}
    for _ in range(TIMING_ROUNDS):
        for name in strategies:
            model = build_model(config, len(values), tensors, device)
            previous = copy.deepcopy(model).eval().requires_grad_(False)
            ctx = StageContext(
                config=config, model=model, sampler=sampler, num_classes=len(values), device=device,
                rng=np.random.default_rng(0), stage=2, site=site, previous_model=previous, buffer=buffer,
            )
            stamps: list[float] = []
            Trainer(ctx, get_strategy(name)(config), progress=lambda event: stamps.append(time.perf_counter())).fit()
            if device.type == "cuda":
                torch.cuda.synchronize()
            durations[name].extend(np.diff(stamps)[TIMING_WARMUP:].tolist())
    return {name: float(np.median(values)) for name, values in durations.items()}


def run_chain(spec: RunSpec) -> dict[str, Any]:
    """Train the base model and adapt site by site; return R, b and timings. Runs in a child process."""
    import torch

    from dakr.data.site import discover_site
    from dakr.inference import default_device
    from dakr.pipeline import adapt, lineage
    from dakr.store import Store

    print(f"== {spec.label} seed {spec.seed}", flush=True)
    _reset_peak_rss()
    shutil.rmtree(spec.store_dir, ignore_errors=True)
    store = Store.init(spec.store_dir)
    sites = spec.sites
    timer = _StepTimer(spec.label)
    for site in sites:
        store.add_site(site, discover_site(Path(spec.data_dir) / site))
    started = time.perf_counter()
    for site in sites:
        adapt(store, site, strategy=spec.strategy, overrides=spec.overrides, progress=timer, activate="always")
    chain = lineage(store, store.active_version())
    matrix = [[store.site_dice(v.id, s) for s in sites] for v in chain]
    base = [store.site_dice(chain[0].id, s) for s in sites]
    device = default_device()
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {
        "matrix": matrix,
        "base": base,
        "seconds_per_step": timer.seconds_per_step,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": peak_gpu,
        "device": f"{device.type}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "seed": spec.seed,
    }


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux): a child process inherits its parent's mark across exec."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """Peak resident memory of this process since :func:`_reset_peak_rss`, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StepTimer:
    """Progress callback measuring training time per optimiser step (stages ≥ 2 only: the alignment costs)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.stage = 0
        self.seconds = 0.0
        self.steps = 0
        self._last: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != "train":
            self._last = None
            return
        now = time.perf_counter()
        if event.step == 1:
            self.stage += 1
        elif self._last is not None and self.stage >= 2:
            self.seconds += now - self._last
            self.steps += 1
        self._last = now
        if event.step == event.total:
            print(f"   [{self.label}] stage {self.stage}: {format_event(event)}", flush=True)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


def _aggregate(runs: list[dict[str, Any]], seconds_per_step: float) -> dict[str, Any]:
    """Mean and spread over seeds of ACC, BWT, forgetting, FWT (Dice points) and costs."""
    matrices = [np.array(r["matrix"], dtype=float) * 100 for r in runs]
    bases = [np.array(r["base"], dtype=float) * 100 for r in runs]
    accs = [acc(m) for m in matrices]
    bwts = [bwt(m) for m in matrices]
    return {
        "acc": float(np.mean(accs)),
        "acc_std": float(np.std(accs)),
        "bwt": float(np.mean(bwts)),
        "bwt_std": float(np.std(bwts)),
        "forgetting": float(np.mean([forgetting(m) for m in matrices])),
        "fwt": float(np.mean([fwt(m, b) for m, b in zip(matrices, bases)])),
        "matrix": np.mean(matrices, axis=0).round(2).tolist(),
        "seconds_per_step": seconds_per_step,
        "chain_seconds_per_step": float(np.mean([r["seconds_per_step"] for r in runs])),
        "peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)),
        "peak_gpu_mb": float(max(r["peak_gpu_mb"] for r in runs)),
        "wall_seconds": float(np.mean([r["wall_seconds"] for r in runs])),
        "seeds": [r["seed"] for r in runs],
        "acc_per_seed": accs,
        "bwt_per_seed": bwts,
    }
