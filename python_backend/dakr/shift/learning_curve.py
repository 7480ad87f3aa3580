"""Learning curve: how many labelled cases of a new site are enough, and does the labelling order help?

For each seed the demo sites before the last are learned in sequence (the "past"); the last site
is the new one. Its training cases are the unlabelled pool, ordered once by
:func:`dakr.shift.rank_images` (with the past model) and once at random (same seed). For every
k in ``ks`` the past store is copied and adapted with only the first k cases of each order. Per
run: the new site's per-case audit Dice and the past sites' backward transfer (BWT). The ranked −
random difference of new-site Dice gets a paired bootstrap interval over seeds and audit cases.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SELECTIONS = ("ranked", "random")
BOOTSTRAP_SAMPLES = 2000


@dataclass
class LearningCurveConfig:
    """What the learning-curve benchmark runs; stored verbatim in ``results.json``."""

    demo: dict[str, Any]
    overrides: dict[str, Any]
    strategy: str = "dakr"
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    seeds: int = 3
    audit_fraction: float = 0.25
    workers: int = 1

    @classmethod
    def load(cls, name_or_path: str | Path) -> "LearningCurveConfig":
        """``learning_curve`` (shipped with the package) or a JSON file; unknown keys are an error."""
        path = Path(name_or_path)
        if not path.exists():
            path = Path(str(resources.files("dakr") / "configs" / f"{name_or_path}.json"))
        if not path.exists():
            raise ValueError(f"unknown learning-curve config {name_or_path!r}. Fix: use learning_curve or a JSON file path")
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; use {sorted(known)}")
        return cls(**data)


def run_learning_curve(config: LearningCurveConfig, out: Path, site_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Run every (seed, selection, k) adaptation; write results.json, results.md and learning_curve.png.

    ``site_dirs`` (site folders in sequence order, the last one new) replaces the demo sites.
    """
    out.mkdir(parents=True, exist_ok=True)
    if site_dirs is None:
        from dakr.demo import build_demo_data

        site_dirs = build_demo_data(out / "data", **config.demo)
    site_dirs = [str(p) for p in site_dirs]
    with _pool(config.workers) as pool:
        pasts = list(pool.map(_learn_past, [(config, site_dirs, seed, str(out / f"seed{seed}" / "past")) for seed in range(config.seeds)]))
        jobs = [
            (config, past, seed, selection, k, str(out / f"seed{seed}" / f"{selection}-k{k}"))
            for seed, past in enumerate(pasts)
            for selection in SELECTIONS
            for k in config.ks
            if k <= len(past["orders"][selection])
        ]
        runs = list(pool.map(_adapt_subset, jobs))
    results = {"config": asdict(config), "sites": [Path(p).name for p in site_dirs], "orders": pasts, "runs": runs}
    results["summary"] = summarise(runs, config.ks)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results["summary"]))
    plot_learning_curve(results["summary"], out / "learning_curve.png")
    return results


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _learn_past(args: tuple[LearningCurveConfig, list[str], int, str]) -> dict[str, Any]:
    """Learn every site but the last, register the last, and order its training cases both ways."""
    from dakr.data.site import discover_site
    from dakr.pipeline import adapt
    from dakr.shift import rank_images
    from dakr.store import Store

    config, site_dirs, seed, folder = args
    store = Store.init(folder)
    overrides = {**config.overrides, "train.seed": seed}
    for site_dir in site_dirs:
        store.add_site(Path(site_dir).name, discover_site(site_dir), audit_fraction=config.audit_fraction, seed=seed)
    *past, new = [Path(p).name for p in site_dirs]
    for site in past:
        adapt(store, site, strategy=config.strategy, overrides=overrides, activate="always")
    pool = store.cases(new, "train")
    ranked = [Path(r.path) for r in rank_images(store, [c.image_path for c in pool], seed=seed)]
    by_path = {c.image_path: c.case_id for c in pool}
    random = [pool[i].case_id for i in np.random.default_rng(seed).permutation(len(pool))]
    return {"store": folder, "new_site": new, "orders": {"ranked": [by_path[p] for p in ranked], "random": random}}


def _adapt_subset(args: tuple[LearningCurveConfig, dict[str, Any], int, str, int, str]) -> dict[str, Any]:
    """Copy the past store, adapt on the first k cases of one order, and read Dice and BWT."""
    from dakr.pipeline import adapt
    from dakr.store import Store

    config, past, seed, selection, k, folder = args
    shutil.copytree(past["store"], folder)
    store = Store.open(folder)
    chosen = past["orders"][selection][:k]
    version = adapt(
        store, past["new_site"], strategy=config.strategy, overrides={**config.overrides, "train.seed": seed}, train_case_ids=set(chosen),
        activate="always",
    )
    background = {name for name, value in store.label_names.items() if value == 0}
    per_case = {
        r.case_id: 100.0 * float(np.mean([d for name, d in r.dice.items() if name not in background]))
        for r in store.evaluations(version=version.id, site=past["new_site"])
    }
    past_versions = [v for v in store.versions() if v.id != version.id]
    drops = [100.0 * (store.site_dice(version.id, v.site) - store.site_dice(v.id, v.site)) for v in past_versions]
    shutil.rmtree(Path(folder) / "sites", ignore_errors=True)
    return {"seed": seed, "selection": selection, "k": k, "cases": chosen, "new_site_dice": per_case, "bwt": float(np.mean(drops))}


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[float]:
    """[low, mean, high] 95 % paired bootstrap interval of mean(a − b); rows seeds, columns cases."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    seeds, cases = diff.shape
    means = np.array(
        [diff[rng.integers(0, seeds, seeds)][:, rng.integers(0, cases, cases)].mean() for _ in range(BOOTSTRAP_SAMPLES)]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(diff.mean()), float(high)]


def summarise(runs: list[dict[str, Any]], ks: list[int]) -> list[dict[str, Any]]:
    """Per k: mean new-site Dice and BWT per selection, and the paired ranked − random interval."""
    rows = []
    for k in ks:
        by = {s: sorted((r for r in runs if r["k"] == k and r["selection"] == s), key=lambda r: r["seed"]) for s in SELECTIONS}
        if not all(by.values()):
            continue
        # Each seed has its own audit split; runs of one seed share it, so rows pair up case by case.
        dice = {s: np.array([[r["new_site_dice"][c] for c in sorted(r["new_site_dice"])] for r in by[s]]) for s in SELECTIONS}
        row: dict[str, Any] = {"k": k}
        for s in SELECTIONS:
            row[f"{s}_dice"] = float(dice[s].mean())
            row[f"{s}_bwt"] = float(np.mean([r["bwt"] for r in by[s]]))
        row["ranked_minus_random_dice"] = paired_difference(dice["ranked"], dice["random"])
        rows.append(row)
    return rows


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (Dice and BWT in points)."""
    lines = [
        "| k | ranked Dice | random Dice | ranked − random (95 % CI) | ranked BWT | random BWT |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        low, mean, high = row["ranked_minus_random_dice"]
        lines.append(
            f"| {row['k']} | {row['ranked_dice']:.1f} | {row['random_dice']:.1f} | {mean:+.1f} [{low:+.1f}, {high:+.1f}] "
            f"| {row['ranked_bwt']:+.1f} | {row['random_bwt']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_learning_curve(summary: list[dict[str, Any]], path: Path) -> None:
    """New-site Dice and past-site BWT against k, ranked vs random."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    dice_ax, bwt_ax = figure.subplots(1, 2)
    ks = [row["k"] for row in summary]
    for selection, style in zip(SELECTIONS, ("o-", "s--")):
        dice_ax.plot(ks, [row[f"{selection}_dice"] for row in summary], style, label=selection)
        bwt_ax.plot(ks, [row[f"{selection}_bwt"] for row in summary], style, label=selection)
    for ax, title, unit in ((dice_ax, "new-site Dice", "Dice (points)"), (bwt_ax, "past sites: BWT", "BWT (points)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("labelled cases of the new site (k)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.savefig(path, dpi=120)
