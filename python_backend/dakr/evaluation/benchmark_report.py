"""Markdown table and PNG plots of a benchmark's ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dakr.extras import require_extra

matplotlib = require_extra("matplotlib", "report", "The benchmark's plots")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_benchmark_outputs(results: dict[str, Any], out: Path) -> None:
    """Write ``results.md``, ``accuracy_matrices.png`` and ``final_dice.png`` into ``out``."""
    (out / "results.md").write_text(markdown_table(results) + "\n" + targets_section(results))
    plot_accuracy_matrices(results, out / "accuracy_matrices.png")
    plot_final_dice(results, out / "final_dice.png")


def markdown_table(results: dict[str, Any]) -> str:
    """One row per strategy: ACC, BWT, forgetting, FWT (Dice points, mean ± std over seeds) and costs."""
    strategies = results["strategies"]
    reference = strategies.get("replay", {}).get("seconds_per_step")
    lines = [
        f"Sites in order: {', '.join(results['sites'])}. Device: {results['device']}. "
        f"Seeds: {len(next(iter(strategies.values()))['seeds'])}. FWT reference: {results['fwt_reference']}.",
        "",
        "| strategy | ACC | BWT | forgetting | FWT | s/step | × replay | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in strategies.items():
        ratio = f"{row['seconds_per_step'] / reference:.2f}" if reference else "–"
        lines.append(
            f"| {name} | {row['acc']:.1f} ± {row['acc_std']:.1f} | {row['bwt']:.1f} ± {row['bwt_std']:.1f} | "
            f"{row['forgetting']:.1f} | {row['fwt']:.1f} | {row['seconds_per_step']:.3f} | {ratio} | {row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def target_checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The product's benchmark targets as (target, measured, met) rows; targets need ``dakr`` in the results."""
    rows = results["strategies"]
    if "dakr" not in rows:
        return []
    dakr = rows["dakr"]
    checks = []
    if "finetune" in rows:
        value = rows["finetune"]["bwt"]
        checks.append(("finetune BWT ≤ −5 (forgetting is real)", f"{value:.1f}", value <= -5))
    for name in ("replay", "ewc", "lwf", "finetune"):
        if name in rows:
            other = rows[name]
            checks.append((
                f"dakr beats {name} on ACC and BWT",
                f"ACC {dakr['acc']:.1f} vs {other['acc']:.1f}, BWT {dakr['bwt']:.1f} vs {other['bwt']:.1f}",
                dakr["acc"] > other["acc"] and dakr["bwt"] > other["bwt"],
            ))
    if "joint" in rows:
        gap = rows["joint"]["acc"] - dakr["acc"]
        checks.append(("dakr ACC within 2 points of joint", f"{dakr['acc']:.1f} vs {rows['joint']['acc']:.1f}", gap <= 2))
    if "replay" in rows:
        ratio = dakr["seconds_per_step"] / rows["replay"]["seconds_per_step"]
        checks.append(("dakr seconds/step ≤ 1.3 × replay", f"{ratio:.2f}×", ratio <= 1.3))
    return checks


def targets_section(results: dict[str, Any]) -> str:
    """Markdown list of :func:`target_checks`."""
    checks = target_checks(results)
    if not checks:
        return ""
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if met else '**no**'} |" for target, measured, met in checks]
    return "\n".join(lines) + "\n"


def plot_accuracy_matrices(results: dict[str, Any], path: Path) -> None:
    """A heatmap of the mean accuracy matrix R (stage × site, Dice points) per strategy."""
    strategies = results["strategies"]
    sites = results["sites"]
    columns = min(4, len(strategies))
    rows = int(np.ceil(len(strategies) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.1 * rows), squeeze=False)
    for axis, (name, row) in zip(axes.flat, strategies.items()):
        matrix = np.array(row["matrix"], dtype=float)
        axis.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, "–" if np.isnan(value) else f"{value:.0f}", ha="center", va="center",
                      color="white" if value < 60 else "black", fontsize=8)
        axis.set_title(f"{name}\nACC {row['acc']:.1f}  BWT {row['bwt']:.1f}", fontsize=9)
        axis.set_xticks(range(len(sites)), [f"S{j + 1}" for j in range(len(sites))], fontsize=8)
        axis.set_yticks(range(matrix.shape[0]), [f"after {i + 1}" for i in range(matrix.shape[0])], fontsize=8)
    for axis in list(axes.flat)[len(strategies):]:
        axis.axis("off")
    figure.suptitle("Accuracy matrix R: Dice (%) on each site's audit cases after each stage", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_final_dice(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: per-site Dice after the last stage, one bar per strategy."""
    strategies = results["strategies"]
    sites = results["sites"]
    width = 0.8 / len(strategies)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(sites) + 2), 3.6))
    for k, (name, row) in enumerate(strategies.items()):
        final = np.array(row["matrix"], dtype=float)[-1]
        axis.bar(np.arange(len(sites)) + (k - (len(strategies) - 1) / 2) * width, final, width, label=name)
    axis.set_xticks(range(len(sites)), sites, fontsize=8)
    axis.set_ylabel("Dice (%) after the last stage")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=7, ncol=3)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
