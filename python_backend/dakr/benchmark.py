"""``dakr benchmark``: every strategy on the same site sequence, with the same seeds and splits.

Protocol (README, "Benchmark"):

* Each site's cases are split into audit and training cases, and a validation split is carved
  from the training cases (seeded, recorded in every run's store); training never sees either.
* Stage 1 (the base model on the first site) is trained once per (seed, buffer budget) and copied
  into every run of that seed and budget, so all strategies, including matched-compute replay,
  start stage 2 from the identical base model. Runs then adapt site by site, one (variant, budget,
  seed) per child process, ``workers`` at a time, each with one torch thread (CUDA when present).
* ``split="audit"`` scores every stage on the audit cases (final numbers); ``split="validation"``
  scores on the validation cases only and names the best variant of each strategy (tuning).
* ``results.json`` keeps means, sample spreads, per-seed matrices and per-case Dice, per-stage
  strategy diagnostics and, for each compared pair, the paired difference of ACC and BWT with a
  95 % bootstrap interval over seeds and cases. A Markdown table and PNG plots are written too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dakr.config import ExperimentConfig, apply_overrides, flatten
from dakr.continual.strategies import MAIN_STRATEGIES, get_strategy
from dakr.evaluation.continual_metrics import acc, bwt, forgetting, fwt
from dakr.evaluation.statistics import paired_bootstrap, sample_std
from dakr.governance.strict_json import json_safe
from dakr.progress import ProgressEvent, format_event
from dakr.shipped_configs import benchmark_config_names, benchmark_config_path

#: Interleaved timing rounds per strategy, steps per round, and steps discarded as warm-up.
TIMING_ROUNDS = 3
TIMING_STEPS = 30
TIMING_WARMUP = 5
#: Where a benchmark scores its accuracy matrices.
SCORE_SPLITS = ("audit", "validation")
#: Strategy that trains the shared stage-1 base model: at stage 1 EWC trains exactly like plain
#: supervised training and only adds, after training, the Fisher estimate that EWC runs inherit.
BASE_STRATEGY = "ewc"


@dataclass
class Variant:
    """A named strategy with its own config overrides: one row of the results."""

    name: str
    strategy: str
    overrides: dict[str, Any]


@dataclass
class BenchmarkConfig:
    """What a benchmark runs; stored verbatim in ``results.json``."""

    name: str
    #: Demo data parameters (see :func:`dakr.demo.build_demo_data`).
    demo: dict[str, Any]
    #: Experiment config overrides shared by every run (dotted keys).
    overrides: dict[str, Any]
    #: Strategy names and variants (see :func:`expand_variants`).
    strategies: list[str | dict[str, Any]] = field(default_factory=lambda: list(MAIN_STRATEGIES))
    seeds: int = 2
    #: Buffer budgets in samples; the first is the main one, the others are reported as ``name@buffer=N``.
    buffer_budgets: list[int] = field(default_factory=lambda: [64, 16])
    #: Variants also run at the non-main budgets.
    budget_strategies: list[str] = field(default_factory=lambda: ["replay", "dakr"])
    #: Also run ``replay`` from stage 2 on with as many steps as fit in ``dakr``'s measured step time.
    matched_compute: bool = True
    #: Runs executed at the same time; each uses one torch thread (and the GPU when there is one).
    workers: int = 1
    #: ``"audit"`` (final numbers) or ``"validation"`` (tuning: also names the best variant per strategy).
    split: str = "audit"
    #: Share of each site's cases in its audit split.
    audit_fraction: float = 0.2
    #: Share of each site's remaining training cases held out as validation cases.
    validation_fraction: float = 0.2
    #: Seed of the audit and validation splits (the same for every run).
    split_seed: int = 0
    #: Compared pairs ``[a, b]`` (variant names) for the paired differences; default: dakr against every other.
    paired: list[list[str]] | None = None
    bootstrap_resamples: int = 2000
    #: Measure seconds per step in an interleaved timing phase.
    timing: bool = True

    @classmethod
    def load(cls, name_or_path: str) -> "BenchmarkConfig":
        """A shipped config name (:func:`~dakr.shipped_configs.benchmark_config_names`) or a path to a JSON file."""
        path = Path(name_or_path)
        if not path.exists():
            path = benchmark_config_path(name_or_path)
        if not path.exists():
            shipped = ", ".join(benchmark_config_names())
            raise ValueError(f"unknown benchmark config {name_or_path!r}. Fix: use one of {shipped} or a JSON file path")
        config = cls(**json.loads(path.read_text()))
        config.check()
        return config

    def check(self) -> None:
        """Raise ``ValueError`` naming the field and the fix when the config cannot run."""
        if self.split not in SCORE_SPLITS:
            raise ValueError(f"benchmark split must be one of {SCORE_SPLITS}, got {self.split!r}. Fix: use audit or validation")
        if self.seeds < 1 or self.workers < 1 or not self.buffer_budgets:
            raise ValueError("benchmark seeds and workers must be >= 1 and buffer_budgets non-empty. Fix: edit the config")
        for variant in self.variants():
            apply_overrides(ExperimentConfig(), {**self.overrides, **variant.overrides})

    def variants(self) -> list[Variant]:
        return expand_variants(self.strategies)


def expand_variants(entries: list[str | dict[str, Any]]) -> list[Variant]:
    """Strategy names and variant objects as variants; a ``grid`` expands to every combination.

    An entry is a registered strategy name or ``{"name": N, "strategy": S, "overrides": {...},
    "grid": {"continual.lambda_cna": [0.1, 1.0], ...}}``: ``name`` defaults to the strategy, and
    each grid point is named ``N[lambda_cna=0.1,...]`` with the point's values added to the overrides.
    """
    variants = []
    for entry in entries:
        entry = {"strategy": entry} if isinstance(entry, str) else dict(entry)
        unknown = set(entry) - {"name", "strategy", "overrides", "grid"}
        if unknown or "strategy" not in entry:
            raise ValueError(
                f"benchmark strategy entry {entry!r} is not valid. "
                'Fix: use a strategy name or {"name", "strategy", "overrides", "grid"}'
            )
        get_strategy(entry["strategy"])
        name = entry.get("name", entry["strategy"])
        grid = entry.get("grid", {})
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            variants.append(Variant(_point_name(name, point), entry["strategy"], {**entry.get("overrides", {}), **point}))
    names = [variant.name for variant in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"benchmark variants named more than once: {', '.join(repeated)}. Fix: give each variant its own name")
    return variants


def _point_name(name: str, point: dict[str, Any]) -> str:
    if not point:
        return name
    return name + "[" + ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items()) + "]"


@dataclass
class BaseSpec:
    """The stage-1 store shared by every run of one seed, buffer budget and base-shaping overrides."""

    store_dir: str
    site_dirs: list[str]
    overrides: dict[str, Any]
    audit_fraction: float
    validation_fraction: float
    split_seed: int
    split: str


@dataclass
class RunSpec:
    """One benchmark run: a variant adapting sites 2..T from a shared base store, one seed and budget."""

    label: str
    strategy: str
    seed: int
    buffer_samples: int
    sites: list[str]
    store_dir: str
    base_store: str
    overrides: dict[str, Any]
    split: str


def run_benchmark(
    config_name: str,
    out: Path,
    *,
    strategies: list[str] | None = None,
    seeds: int | None = None,
    workers: int | None = None,
    split: str | None = None,
    data_dir: str | Path | None = None,
    sites: list[str] | None = None,
    demo_data: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md`` and plots into ``out``.

    The sites are the demo sequence (built into ``demo_data``, default ``out/data``, or reused
    from there when it was built with the same parameters) or, with ``data_dir``, the site
    folders ``sites`` inside it (nnU-Net raw layout), in that order. With ``resume``, base models
    and runs that an earlier call into the same ``out`` finished with the identical spec are
    reused (an interrupted benchmark continues where it stopped; more seeds add only the new runs).
    """
    config = BenchmarkConfig.load(config_name)
    if strategies:
        config.strategies = list(strategies)
    config.seeds = seeds or config.seeds
    config.workers = workers or config.workers
    config.split = split or config.split
    config.check()
    out.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        site_dirs = user_site_dirs(Path(data_dir), sites or [])
    else:
        from dakr.demo import build_demo_data

        site_dirs = build_demo_data(Path(demo_data) if demo_data else out / "data", **config.demo)
    variants = {variant.name: variant for variant in config.variants()}
    main_budget = config.buffer_budgets[0]
    plan = [(variant, main_budget, variant.name) for variant in variants.values()]
    plan += [
        (variants[name], budget, f"{name}@buffer={budget}")
        for budget in config.buffer_budgets[1:]
        for name in config.budget_strategies
        if name in variants
    ]
    bases: dict[str, BaseSpec] = {}
    specs = [
        _run_spec(config, variant, budget, seed, label, site_dirs, out, bases, {})
        for variant, budget, label in plan
        for seed in range(config.seeds)
    ]
    _execute(build_base, list(bases.values()), config.workers, resume)
    runs: dict[str, list[dict[str, Any]]] = {}
    for spec, result in zip(specs, _execute(run_chain, specs, config.workers, resume)):
        runs.setdefault(spec.label, []).append(result)
    step_seconds: dict[str, float] = {}
    if config.timing and len(site_dirs) > 1:
        reference = next(spec.base_store for spec in specs if spec.seed == 0 and spec.buffer_samples == main_budget)
        timed = [(v.name, v.strategy, {**config.overrides, **v.overrides}) for v in variants.values()]
        step_seconds = _in_child(measure_step_seconds, reference, site_dirs[1].name, timed)
    if config.matched_compute and {"dakr", "replay"} <= variants.keys() and step_seconds:
        steps = apply_overrides(ExperimentConfig(), config.overrides).train.steps_per_epoch
        later = {"train.steps_per_epoch": max(1, round(steps * step_seconds["dakr"] / step_seconds["replay"]))}
        matched = [
            _run_spec(config, variants["replay"], main_budget, seed, "replay-matched", site_dirs, out, bases, later)
            for seed in range(config.seeds)
        ]
        runs["replay-matched"] = _execute(run_chain, matched, config.workers, resume)
        step_seconds["replay-matched"] = step_seconds["replay"]
    labels = {label: variant for variant, _, label in plan} | ({"replay-matched": variants["replay"]} if "replay-matched" in runs else {})
    strategies_out = {label: _aggregate(label_runs, step_seconds.get(label.split("@")[0])) for label, label_runs in runs.items()}
    results: dict[str, Any] = {
        "config": asdict(config),
        "data": str(data_dir) if data_dir is not None else "demo",
        "sites": [d.name for d in site_dirs],
        "split": config.split,
        "device": runs[plan[0][2]][0]["device"],
        "splits": runs[plan[0][2]][0]["splits"],
        "fwt_reference": "b_j = Dice of the stage-1 (base) model of the same run on site j; FWT averages sites j >= 3",
        "step_timing": f"median seconds per optimiser step at stage 2 ({TIMING_ROUNDS} interleaved rounds of "
        f"{TIMING_STEPS} steps per strategy, one process, same data, previous network and buffer)",
        "strategies": strategies_out,
        "paired": paired_differences(config, runs),
    }
    if config.split == "validation":
        results["winners"] = select_winners(strategies_out, labels, main_budget)
        (out / "winners.json").write_text(json.dumps(results["winners"], indent=2))
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    from dakr.evaluation.benchmark_report import write_benchmark_outputs

    write_benchmark_outputs(json_safe(results), out)
    return results


def user_site_dirs(data_dir: Path, sites: list[str]) -> list[Path]:
    """The site folders ``data_dir/<site>`` in the given order, checked before any run starts."""
    from dakr.data.errors import DataError
    from dakr.data.names import validate_name
    from dakr.data.site import discover_site

    if not data_dir.is_dir():
        raise DataError(data_dir, "is not a folder", "pass --data the folder that holds one nnU-Net raw folder per site")
    if len(sites) < 2:
        raise ValueError(
            f"--data {data_dir} needs --sites with at least two site folder names, in training order. "
            f"Fix: e.g. --sites {' '.join(sorted(p.name for p in data_dir.iterdir() if p.is_dir())[:3]) or 'SITE_A SITE_B'}"
        )
    folders = []
    for name in sites:
        folder = data_dir / name
        if not folder.is_dir():
            found = ", ".join(sorted(p.name for p in data_dir.iterdir() if p.is_dir())) or "none"
            raise DataError(folder, "is not a folder", f"--sites names folders inside {data_dir} (found: {found})")
        validate_name(name, "site")
        cases = {case.case_id for case in discover_site(folder).cases}
        if len(cases) < 3:
            raise DataError(
                folder, f"has {len(cases)} case(s); the benchmark needs at least 3 per site (audit, validation and training)",
                "add cases to imagesTr and labelsTr",
            )
        folders.append(folder)
    if len(set(sites)) != len(sites):
        raise ValueError("--sites names a folder twice. Fix: list each site once, in training order")
    return folders


def _run_spec(
    config: BenchmarkConfig, variant: Variant, budget: int, seed: int, label: str,
    site_dirs: list[Path], out: Path, bases: dict[str, BaseSpec], later: dict[str, Any],
) -> RunSpec:
    """The run of ``variant``; registers (in ``bases``) the shared base store it starts from."""
    overrides = {**config.overrides, **variant.overrides, "train.seed": seed, "continual.buffer_samples": budget}
    shaping = _base_shaping(overrides)
    key = json.dumps(shaping, sort_keys=True)
    if key not in bases:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        bases[key] = BaseSpec(
            str(out / "runs" / f"base-seed{seed}-buffer{budget}-{digest}"), [str(d) for d in site_dirs], shaping,
            config.audit_fraction, config.validation_fraction, config.split_seed, config.split,
        )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return RunSpec(
        label, variant.strategy, seed, budget, [d.name for d in site_dirs], str(out / "runs" / f"{safe}-seed{seed}"),
        bases[key].store_dir, {**overrides, **later}, config.split,
    )


def _execute(function: Callable[[Any], Any], specs: list[Any], workers: int, resume: bool = False) -> list[Any]:
    """Run ``function`` on each spec in a fresh child process (own memory peak, own torch state), ``workers`` at a time.

    Each result is recorded beside the spec's store (:func:`_record_path`) as soon as its run ends, so
    an interruption or a failed run loses only the runs in flight; with ``resume`` a spec whose record
    holds the identical spec is not run again and its recorded result is returned. The first failure
    is raised once every other run has ended.
    """
    results = {index: _finished(spec) for index, spec in enumerate(specs)} if resume else {}
    results = {index: result for index, result in results.items() if result is not None}
    if results:
        print(f"== resume: {len(results)} of {len(specs)} finished runs reused", flush=True)
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(function, spec): index for index, spec in enumerate(specs) if index not in results}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as error:  # the other runs still finish and are recorded
                failure = failure or error
                continue
            _record_path(specs[index]).write_text(json.dumps({**_identity(specs[index]), "result": results[index]}))
    if failure is not None:
        raise failure
    return [results[index] for index in range(len(specs))]


def _record_path(spec: Any) -> Path:
    """Where the result of ``spec`` is recorded once it finished: beside its store folder."""
    return Path(spec.store_dir + ".done.json")


def _base_shaping(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape the stage-1 base model: all but the continual ones, except the buffer's."""
    return {k: v for k, v in settings.items() if not k.startswith("continual.") or k.startswith("continual.buffer")}


def _identity(spec: Any) -> dict[str, Any]:
    """What a finished record must match to be reused: the spec and, for a base or run, every setting it resolves to.

    The resolved settings include the defaults, so a run recorded before a default changed is run again.
    """
    identity: dict[str, Any] = {"spec": asdict(spec)}
    if isinstance(spec, (BaseSpec, RunSpec)):
        settings = flatten(asdict(apply_overrides(ExperimentConfig(), spec.overrides)))
        identity["settings"] = _base_shaping(settings) if isinstance(spec, BaseSpec) else settings
    return json.loads(json.dumps(identity))


def _finished(spec: Any) -> Any:
    """The recorded result of ``spec`` (``{}`` for a base) when it finished with the identical identity, else ``None``.

    Records keep NaN (a Dice that is undefined) as JSON ``NaN``, so a reused result equals the fresh one.
    """
    path = _record_path(spec)
    if not path.is_file() or not Path(spec.store_dir).is_dir():
        return None
    record = json.loads(path.read_text())
    identity = _identity(spec)
    if {key: record.get(key) for key in identity} != identity:
        return None
    return record.get("result") or {}


def _in_child(function: Any, *args: Any) -> Any:
    """Run ``function(*args)`` alone in a fresh child process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _single_thread() -> None:
    """One torch thread per run process, so parallel runs do not oversubscribe the cores."""
    import torch

    torch.set_num_threads(1)


def build_base(spec: BaseSpec) -> None:
    """Register every site (frozen audit split, recorded validation split) and train stage 1. Runs in a child process."""
    from dakr.data.site import discover_site
    from dakr.pipeline import adapt
    from dakr.store import Store
    from dakr.store.validation_split import carve_validation

    _single_thread()
    print(f"== base {Path(spec.store_dir).name}", flush=True)
    _record_path(spec).unlink(missing_ok=True)
    shutil.rmtree(spec.store_dir, ignore_errors=True)
    store = Store.init(spec.store_dir)
    for folder in map(Path, spec.site_dirs):
        store.add_site(folder.name, discover_site(folder), audit_fraction=spec.audit_fraction, seed=spec.split_seed)
        carve_validation(store, folder.name, spec.validation_fraction, spec.split_seed)
    first = Path(spec.site_dirs[0]).name
    adapt(
        store, first, strategy=BASE_STRATEGY, overrides=spec.overrides, progress=_StepTimer("base", 0),
        evaluate=spec.split == "audit", activate="always",
    )


def run_chain(spec: RunSpec) -> dict[str, Any]:
    """Copy the base store, adapt site by site; return R, b, per-case Dice, diagnostics and timings. Runs in a child process."""
    import torch

    from dakr.inference import default_device
    from dakr.pipeline import adapt, lineage
    from dakr.store import Store

    _single_thread()
    print(f"== {spec.label} seed {spec.seed}", flush=True)
    _reset_peak_rss()
    _record_path(spec).unlink(missing_ok=True)
    shutil.rmtree(spec.store_dir, ignore_errors=True)
    shutil.copytree(spec.base_store, spec.store_dir)
    store = Store.open(spec.store_dir)
    timer = _StepTimer(spec.label, 1)
    device = default_device()
    started = time.perf_counter()
    for site in spec.sites[1:]:
        adapt(
            store, site, strategy=spec.strategy, overrides=spec.overrides, progress=timer,
            evaluate=spec.split == "audit", activate="always",
        )
    chain = lineage(store, store.active_version())
    cases, case_dice = chain_case_dice(store, [v.id for v in chain], spec.sites, spec.split, device)
    matrix = [[_nanmean(site) for site in stage] for stage in case_dice]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {
        "seed": spec.seed,
        "matrix": matrix,
        "base": matrix[0],
        "cases": cases,
        "case_dice": case_dice,
        "diagnostics": timer.diagnostics,
        "splits": {s: {"audit": [c.case_id for c in store.cases(s, "audit")], "validation": _validation_ids(store, s)} for s in spec.sites},
        "seconds_per_step": timer.seconds_per_step,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": peak_gpu,
        "device": run_device(device),
    }


def run_device(device: Any) -> str:
    """Where a run trained, precisely enough to say whether it can reproduce bit for bit.

    Runs are bit-identical only on the same torch build and kernel set: on a CPU with another
    instruction set (``torch.backends.cpu.get_cpu_capability()``) the same seed gives slightly
    different floating-point results, and so different per-seed Dice.
    """
    import platform

    import torch

    from dakr.governance.provenance import device_description

    kernels = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}; " if device.type == "cpu" else ""
    return f"{device_description(device)} ({kernels}torch {torch.__version__})"


def _validation_ids(store: Any, site: str) -> list[str]:
    from dakr.store.validation_split import validation_case_ids

    return sorted(validation_case_ids(store, site))


def chain_case_dice(store: Any, version_ids: list[int], sites: list[str], split: str, device: Any) -> tuple[dict[str, list[str]], list[list[list[float]]]]:
    """Case ids per site and Dice[stage][site][case] (mean foreground Dice, NaN when undefined) on ``split``.

    Audit Dice comes from the store's evaluations; validation Dice is computed here and never stored.
    """
    from dakr.store.aggregate import foreground_dice, mean_skipping_nan
    from dakr.store.validation_split import validation_cases

    background = {name for name, value in (store.label_names or {}).items() if value == 0}
    if split == "audit":
        cases = {site: [c.case_id for c in store.cases(site, "audit")] for site in sites}
        dice = []
        for version_id in version_ids:
            per_case = {(r.site, r.case_id): mean_skipping_nan(foreground_dice(r.dice, background).values()) for r in store.evaluations(version=version_id)}
            dice.append([[_float(per_case.get((site, case_id))) for case_id in cases[site]] for site in sites])
        return cases, dice
    records = {site: validation_cases(store, site) for site in sites}
    cases = {site: [c.case_id for c in records[site]] for site in sites}
    return cases, [[[validation_dice(store, version_id, case, device) for case in records[site]] for site in sites] for version_id in version_ids]


def validation_dice(store: Any, version_id: int, case: Any, device: Any) -> float:
    """Mean foreground Dice of a version on one validation case (NaN when no class is defined)."""
    import SimpleITK as sitk

    from dakr.data.io import read_image
    from dakr.evaluation.metrics import dice_per_class
    from dakr.inference import predict_volume
    from dakr.pipeline import load_version_model
    from dakr.store.aggregate import mean_skipping_nan

    model, config, values = load_version_model(store, version_id, device)
    prediction = predict_volume(model, read_image(case.image_path), config, values, device)
    foreground = [v for v in values if v != 0]
    dice = dice_per_class(sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(read_image(case.label_path)), foreground)
    return _float(mean_skipping_nan(dice[v] for v in foreground))


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def measure_step_seconds(store_dir: str, site: str, variants: list[tuple[str, str, dict[str, Any]]]) -> dict[str, float]:
    """Median seconds per training step of each ``(name, strategy, overrides)``, measured in interleaved rounds.

    Every variant trains stage 2 from the stored base model (as the current and the previous
    network) with its buffer and the second site's data for :data:`TIMING_STEPS` steps per round;
    the rounds alternate variants so that drifts of the machine hit all of them alike.
    """
    import copy

    import torch

    from dakr.continual.buffer import ReplayBuffer
    from dakr.inference import default_device
    from dakr.pipeline import build_model, label_values, training_sampler
    from dakr.store import Store
    from dakr.training import StageContext, Trainer

    _single_thread()
    store = Store.open(store_dir)
    base = store.versions()[0]
    values = label_values(store)
    device = default_device()
    buffer = ReplayBuffer.from_arrays(store.load_buffer(base.id))
    tensors = store.load_tensors(base.id)
    durations: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(TIMING_ROUNDS):
        for name, strategy, overrides in variants:
            config = apply_overrides(
                ExperimentConfig.from_dict(base.config), {**overrides, "train.epochs": 1, "train.steps_per_epoch": TIMING_STEPS}
            )
            model = build_model(config, len(values), tensors, device)
            previous = copy.deepcopy(model).eval().requires_grad_(False)
            ctx = StageContext(
                config=config, model=model, sampler=training_sampler(store, [site], config, values), num_classes=len(values),
                device=device, rng=np.random.default_rng(0), stage=2, site=site, previous_model=previous, buffer=buffer,
            )
            stamps: list[float] = []
            Trainer(ctx, get_strategy(strategy)(config), progress=lambda event: stamps.append(time.perf_counter())).fit()
            if device.type == "cuda":
                torch.cuda.synchronize()
            durations[name].extend(np.diff(stamps)[TIMING_WARMUP:].tolist())
    return {name: float(np.median(values)) for name, values in durations.items()}


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
    """Progress callback: training time per optimiser step from stage 2 on, and per-stage diagnostics."""

    def __init__(self, label: str, stages_done: int) -> None:
        self.label = label
        self.stage = stages_done
        self.seconds = 0.0
        self.steps = 0
        self.diagnostics: list[dict[str, float]] = []
        self._last: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "diagnostics":
            self.diagnostics.append({"stage": self.stage, **event.diagnostics})
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


def _aggregate(runs: list[dict[str, Any]], seconds_per_step: float | None) -> dict[str, Any]:
    """Means and sample spreads (ddof = 1) over seeds of ACC, BWT, forgetting, FWT, new-site Dice (Dice points) and costs."""
    runs = sorted(runs, key=lambda r: r["seed"])
    per_seed = []
    for run in runs:
        matrix = np.array(run["matrix"], dtype=float) * 100
        base = np.array(run["base"], dtype=float) * 100
        per_seed.append({
            "seed": run["seed"],
            "acc": acc(matrix),
            "bwt": bwt(matrix),
            "forgetting": forgetting(matrix),
            "fwt": fwt(matrix, base),
            "new_site": float(np.nanmean(np.diag(matrix))),
            "matrix": matrix.round(3).tolist(),
            "cases": run["cases"],
            "case_dice": run["case_dice"],
            "diagnostics": run["diagnostics"],
            "seconds_per_step": run["seconds_per_step"],
            "wall_seconds": run["wall_seconds"],
        })
    summary: dict[str, Any] = {}
    for metric in ("acc", "bwt", "forgetting", "fwt", "new_site"):
        values = [row[metric] for row in per_seed]
        summary[metric] = _nanmean(values)
        summary[f"{metric}_std"] = sample_std(values)
    return {
        **summary,
        "matrix": np.mean([row["matrix"] for row in per_seed], axis=0).round(2).tolist(),
        "seconds_per_step": seconds_per_step,
        "chain_seconds_per_step": float(np.mean([r["seconds_per_step"] for r in runs])),
        "peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)),
        "peak_gpu_mb": float(max(r["peak_gpu_mb"] for r in runs)),
        "wall_seconds": float(np.mean([r["wall_seconds"] for r in runs])),
        "seeds": [r["seed"] for r in runs],
        "per_seed": per_seed,
    }


def paired_differences(config: BenchmarkConfig, runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """``{"a-b@buffer=N": {"acc": [low, mean, high], "bwt": [...]}}`` for every compared pair and shared budget."""
    names = [variant.name for variant in config.variants()]
    pairs = config.paired if config.paired is not None else [["dakr", other] for other in names if "dakr" in names and other != "dakr"]
    if "replay-matched" in runs and config.paired is None and "dakr" in names:
        pairs = [*pairs, ["dakr", "replay-matched"]]
    main = config.buffer_budgets[0]
    paired = {}
    for a, b in pairs:
        for budget in config.buffer_budgets:
            label_a, label_b = (name if budget == main else f"{name}@buffer={budget}" for name in (a, b))
            if label_a in runs and label_b in runs:
                paired[f"{a}-{b}@buffer={budget}"] = paired_bootstrap(
                    _site_arrays(runs[label_a]), _site_arrays(runs[label_b]), resamples=config.bootstrap_resamples, seed=config.split_seed
                )
    return paired


def _site_arrays(runs: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per site an array (seeds, stages, cases) of Dice points, seeds in order."""
    runs = sorted(runs, key=lambda r: r["seed"])
    stacked = [np.array([[stage[j] for stage in run["case_dice"]] for run in runs], dtype=float) * 100 for j in range(len(runs[0]["case_dice"][0]))]
    return stacked


def select_winners(strategies: dict[str, dict[str, Any]], variants: dict[str, Variant], main_budget: int) -> dict[str, dict[str, Any]]:
    """Per strategy, the variant with the highest mean validation ACC at the main budget (its overrides and scores)."""
    winners: dict[str, dict[str, Any]] = {}
    for label, variant in variants.items():
        if label != variant.name:
            continue
        row = strategies[label]
        best = winners.get(variant.strategy)
        if best is None or row["acc"] > best["acc"]:
            winners[variant.strategy] = {
                "variant": label, "overrides": variant.overrides, "acc": row["acc"], "acc_std": row["acc_std"], "buffer": main_budget,
            }
    return winners
