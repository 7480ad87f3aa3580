"""How numbers are shown to people: Dice in points (0-100) and tables that keep full names."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_dice_points(value: float | None) -> str:
    """Dice fraction as points with one decimal (``0.8523`` -> ``"85.2"``), ``"–"`` when missing."""
    return "–" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"


def dice_table(version_ids: Sequence[int], site_names: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> str:
    """The Dice matrix with one row per site (full names) and one column per version, in points."""
    width = max([len("site"), *(len(name) for name in site_names)]) + 2
    header = f"{'site':<{width}}" + "".join(f"{'v' + str(v):>8}" for v in version_ids)
    rows = [
        f"{site:<{width}}" + "".join(f"{format_dice_points(matrix[i][j]):>8}" for i in range(len(version_ids)))
        for j, site in enumerate(site_names)
    ]
    return "\n".join([header, *rows])
