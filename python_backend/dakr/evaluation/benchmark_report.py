"""Markdown table and PNG plots of a benchmark's ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dakr.extras import require_extra

matplotlib = require_extra("matplotlib", "report", "The benchmark's plots")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_benchmark_outputs(results: dict[str, Any], out: Path) -> None:
    """Write ``results.md``, ``accuracy_matrices.png`` and ``final_dice.png`` into ``out``."""
    sections = [markdown_table(results), paired_table(results), winners_table(results), targets_section(results)]
    (out / "results.md").write_text("\n".join(section for section in sections if section))
    plot_accuracy_matrices(results, out / "accuracy_matrices.png")
    plot_final_dice(results, out / "final_dice.png")


def _spread(row: dict[str, Any], metric: str) -> str:
    mean, std = row.get(metric), row.get(f"{metric}_std")
    if mean is None:
        return "–"
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _interval(values: list[float | None]) -> str:
    low, mean, high = values
    if mean is None:
        return "–"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]" if low is not None and high is not None else f"{mean:+.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per strategy: ACC, BWT, new-site Dice, forgetting, FWT (Dice points, mean ± sample std over seeds) and costs."""
    strategies = results["strategies"]
    reference = strategies.get("replay", {}).get("seconds_per_step")
    split = results.get("split", "audit")
    lines = [
        f"Sites in order: {', '.join(results['sites'])}. Scored on the {split} split. Device: {results['device']}. "
        f"Seeds: {len(next(iter(strategies.values()))['seeds'])} (± is the sample std over seeds). "
        f"New site: mean of R[t, t]. FWT reference: {results['fwt_reference']}.",
        "",
        "| strategy | ACC | BWT | new site | forgetting | FWT | s/step | × replay | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in strategies.items():
        step = row.get("seconds_per_step")
        ratio = f"{step / reference:.2f}" if step and reference else "–"
        lines.append(
            f"| {name} | {_spread(row, 'acc')} | {_spread(row, 'bwt')} | {_spread(row, 'new_site')} | {_spread(row, 'forgetting')} | "
            f"{_spread(row, 'fwt')} | {f'{step:.3f}' if step else '–'} | {ratio} | {row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def paired_table(results: dict[str, Any]) -> str:
    """Paired differences a − b of ACC and BWT with their 95 % bootstrap intervals (seeds × cases)."""
    paired = results.get("paired") or {}
    if not paired:
        return ""
    lines = [
        "Paired differences (Dice points), 95 % interval from a bootstrap over seeds and cases:",
        "",
        "| comparison | Δ ACC [95 % CI] | Δ BWT [95 % CI] |",
        "|---|---|---|",
    ]
    lines += [f"| {key} | {_interval(row['acc'])} | {_interval(row['bwt'])} |" for key, row in paired.items()]
    return "\n".join(lines) + "\n"


def winners_table(results: dict[str, Any]) -> str:
    """The best variant of each strategy on validation ACC (tuning runs only)."""
    winners = results.get("winners") or {}
    if not winners:
        return ""
    lines = ["Best variant per strategy on validation ACC:", "", "| strategy | variant | ACC | overrides |", "|---|---|---|---|"]
    lines += [
        f"| {strategy} | {row['variant']} | {row['acc']:.1f} | `{json.dumps(row['overrides'])}` |" for strategy, row in winners.items()
    ]
    return "\n".join(lines) + "\n"


def target_checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The product's benchmark targets as (target, measured, met) rows (audit results with ``dakr`` and ``replay``)."""
    rows, paired = results["strategies"], results.get("paired") or {}
    if results.get("split", "audit") != "audit" or "dakr" not in rows or "replay" not in rows:
        return []
    budgets = results["config"]["buffer_budgets"]
    checks = []
    for budget in budgets:
        suffix = "" if budget == budgets[0] else f"@buffer={budget}"
        replay, dakr = rows.get(f"replay{suffix}"), rows.get(f"dakr{suffix}")
        if replay is None or dakr is None:
            continue
        if budget <= 16:
            checks.append((f"replay BWT ≤ −5 at buffer {budget} (forgetting is real)", f"{replay['bwt']:.1f}", replay["bwt"] <= -5))
        difference = paired.get(f"dakr-replay@buffer={budget}")
        if difference and budget <= 16 and difference["acc"][0] is not None:
            low, mean, _ = difference["acc"]
            checks.append((f"dakr − replay ACC ≥ +2 with the 95 % interval above 0 at buffer {budget}", _interval(difference["acc"]), mean >= 2 and low > 0))
        checks.append((f"dakr BWT ≥ replay BWT at buffer {budget}", f"{dakr['bwt']:.1f} vs {replay['bwt']:.1f}", dakr["bwt"] >= replay["bwt"]))
    if rows["dakr"].get("seconds_per_step") and rows["replay"].get("seconds_per_step"):
        ratio = rows["dakr"]["seconds_per_step"] / rows["replay"]["seconds_per_step"]
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
        axis.set_title(f"{name}\nACC {_spread(row, 'acc')}  BWT {_spread(row, 'bwt')}", fontsize=9)
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
