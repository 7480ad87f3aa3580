"""Figures of the audit report, drawn with matplotlib's Agg canvas (no pyplot, no display needed).

Dice is shown in points (Dice × 100). Label overlays use a fixed palette indexed by label value
with a transparent background, so a class keeps its colour across figures and reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dakr.extras import require_extra

matplotlib = require_extra("matplotlib", "report", "The HTML report")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dakr.display import format_dice_points
from dakr.evaluation.audit import GAINED, LOST, STILL_WRONG, CaseVolumes, centre_of_mass

#: Label colours by value (1 -> first entry, cycling); red and green are kept for the change map.
LABEL_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b", "#7f7f7f")
#: Change-map colours and legend names.
CHANGE_COLORS = {GAINED: ("#2ca02c", "gained (now correct)"), LOST: ("#d62728", "lost (now wrong)"),
                 STILL_WRONG: ("#ffd700", "changed, still wrong")}
OVERLAY_ALPHA = 0.55
_DPI = 110


def label_color(value: int) -> str:
    """The fixed colour of label ``value`` (> 0)."""
    return LABEL_PALETTE[(value - 1) % len(LABEL_PALETTE)]


def _lookup_table(colors: dict[int, str]) -> np.ndarray:
    """(256, 4) RGBA table: listed codes get their colour at OVERLAY_ALPHA, every other code is transparent."""
    table = np.zeros((256, 4))
    for code, color in colors.items():
        table[code] = (*to_rgba(color)[:3], OVERLAY_ALPHA)
    return table


LABEL_LUT = _lookup_table({value: label_color(value) for value in range(1, 256)})
CHANGE_LUT = _lookup_table({code: color for code, (color, _) in CHANGE_COLORS.items()})


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on an Agg canvas (no pyplot state, safe in worker threads)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# ---------------------------------------------------------------------- heatmaps
def draw_heatmap(ax: Axes, dice: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> None:
    """Annotated Dice heatmap (rows x columns, Dice fractions, NaN shown as ``–`` on grey)."""
    ax.set_title(title)
    if dice.size == 0:
        ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(100.0 * dice), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel("audit site")
    for (i, j), value in np.ndenumerate(dice):
        dark_cell = not math.isnan(value) and value < 0.6
        ax.text(j, i, format_dice_points(value), ha="center", va="center", fontsize=9,
                color="white" if dark_cell else "black")
    ax.figure.colorbar(image, ax=ax, label="Dice points")


def save_heatmap(path: Path, dice: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> None:
    """Write :func:`draw_heatmap` as a PNG sized to the matrix."""
    figure = _new_figure(2.5 + 0.9 * max(len(columns), 1), 1.8 + 0.45 * max(len(rows), 1))
    draw_heatmap(figure.add_subplot(), dice, rows, columns, title)
    figure.savefig(path, dpi=_DPI)


# ---------------------------------------------------------------------- case views
@dataclass(frozen=True)
class _View:
    """A plane through the case: an index into (z, y, x) arrays and how to show it."""

    name: str
    index: tuple[int | slice, ...]
    #: Physical height / width of one pixel of the slice.
    aspect: float
    origin: str
    #: Physical height / width of the whole slice.
    shape_ratio: float


@dataclass(frozen=True)
class _Panel:
    """One column of a case figure: a title and an optional overlay volume with its colour table."""

    title: str
    overlay: np.ndarray | None = None
    colors: np.ndarray | None = None


def _views(case: CaseVolumes) -> list[_View]:
    """Axial and coronal planes through the ground truth's centre of mass, with physical aspect ratios."""
    z, y, _ = centre_of_mass(case.truth)
    size_z, size_y, size_x = case.truth.shape
    spacing_z, spacing_y, spacing_x = case.spacing_zyx
    width = size_x * spacing_x
    every = slice(None)
    return [
        _View(f"axial z={z}", (z, every, every), spacing_y / spacing_x, "upper", size_y * spacing_y / width),
        _View(f"coronal y={y}", (every, y, every), spacing_z / spacing_x, "lower", size_z * spacing_z / width),
    ]


def _panels(case: CaseVolumes, with_reference: bool = True) -> list[_Panel]:
    """[image, ground truth,] then the previous and new prediction and their change map (or the one prediction)."""
    panels = [_Panel("image"), _Panel("ground truth", case.truth, LABEL_LUT)] if with_reference else []
    if case.before is None:
        return panels + [_Panel(f"v{case.after_version}", case.after, LABEL_LUT)]
    return panels + [
        _Panel(f"previous v{case.before_version}", case.before, LABEL_LUT),
        _Panel(f"new v{case.after_version}", case.after, LABEL_LUT),
        _Panel("difference", case.changes, CHANGE_LUT),
    ]


def _intensity_window(image: np.ndarray) -> tuple[float, float]:
    low, high = (float(v) for v in np.percentile(image, [1, 99]))
    return low, high if high > low else low + 1.0


def _composite(case: CaseVolumes, view: _View, panel: _Panel, window: tuple[float, float]) -> np.ndarray:
    """RGB slice: the windowed grey image with the panel's overlay alpha-blended on top."""
    low, high = window
    grey = np.clip((case.image[view.index] - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if panel.overlay is None or panel.colors is None:
        return rgb
    rgba = panel.colors[panel.overlay[view.index]]
    alpha = rgba[..., 3:]
    return rgb * (1.0 - alpha) + rgba[..., :3] * alpha


def _draw_panel(ax: Axes, case: CaseVolumes, view: _View, panel: _Panel, window: tuple[float, float]) -> None:
    ax.imshow(_composite(case, view, panel, window), aspect=view.aspect, origin=view.origin, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_handles(label_names: dict[str, int], with_changes: bool) -> list[Patch]:
    foreground = sorted((value, name) for name, value in label_names.items() if value != 0)
    handles = [Patch(color=label_color(value), label=name) for value, name in foreground]
    if with_changes:
        handles += [Patch(color=color, label=name) for color, name in CHANGE_COLORS.values()]
    return handles


def save_case_figure(path: Path, case: CaseVolumes, label_names: dict[str, int]) -> None:
    """PNG of a case: one row per view (axial, coronal), one column per panel, with a colour legend."""
    views, panels = _views(case), _panels(case)
    window = _intensity_window(case.image)
    ratios = [view.shape_ratio for view in views]
    figure = _new_figure(2.3 * len(panels), 2.3 * sum(ratios) + 0.9)
    axes = figure.subplots(len(views), len(panels), squeeze=False, gridspec_kw={"height_ratios": ratios})
    for row, view in zip(axes, views):
        for ax, panel in zip(row, panels):
            _draw_panel(ax, case, view, panel, window)
        row[0].set_ylabel(view.name)
    for ax, panel in zip(axes[0], panels):
        ax.set_title(panel.title, fontsize=10)
    figure.legend(handles=_legend_handles(label_names, case.before is not None), loc="outside lower center",
                  ncol=6, fontsize=8, frameon=False)
    figure.savefig(path, dpi=_DPI)


# ---------------------------------------------------------------------- summary
def save_summary_figure(
    path: Path,
    dice: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    case: CaseVolumes | None,
    label_names: dict[str, int],
) -> None:
    """README figure: the Dice heatmap beside one case's axial before/after/difference panels."""
    title = "Dice by version and site"
    if case is None:
        figure = _new_figure(5.5, 4.2)
        draw_heatmap(figure.add_subplot(), dice, rows, columns, title)
    else:
        panels = _panels(case, with_reference=False)
        case_width = max(2.6 * len(panels), 4.0)
        figure = _new_figure(5.5 + case_width, 4.2)
        heatmap_part, case_part = figure.subfigures(1, 2, width_ratios=[5.5, case_width])
        draw_heatmap(heatmap_part.add_subplot(), dice, rows, columns, title)
        view = _views(case)[0]
        window = _intensity_window(case.image)
        for ax, panel in zip(case_part.subplots(1, len(panels), squeeze=False)[0], panels):
            _draw_panel(ax, case, view, panel, window)
            ax.set_title(panel.title, fontsize=10)
        case_part.suptitle(f"audit case {case.site}/{case.case_id}, {view.name}", fontsize=11)
        case_part.legend(handles=_legend_handles(label_names, case.before is not None), loc="outside lower center",
                         ncol=3, fontsize=8, frameon=False)
    figure.savefig(path, dpi=_DPI)
