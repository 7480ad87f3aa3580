"""The audit table: per audit case of a site, Dice before and after, its change, and the structure
that lost most, from the backend's per-structure Dice (``GET /sites/{site}/audit-dice``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def dice_points(value: float | None, signed: bool = False) -> str:
    """A Dice (0-1) as the product shows it everywhere: Dice points with one decimal (0.8734 → ``87.3``;
    ``signed`` for a change: ``+2.1``), ``n/a`` when not evaluated."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _mean(values: list[float | None]) -> float | None:
    kept = [value for value in values if value is not None]
    return sum(kept) / len(kept) if kept else None


@dataclass
class CaseRegression:
    """One audit case: per structure ``(Dice before, Dice after)``, ``None`` where not evaluated."""

    case_id: str
    structures: dict[str, tuple[float | None, float | None]]

    @property
    def before(self) -> float | None:
        """Mean foreground Dice under the earlier version (as the backend's per-case Dice)."""
        return _mean([before for before, _ in self.structures.values()])

    @property
    def after(self) -> float | None:
        return _mean([after for _, after in self.structures.values()])

    @property
    def change(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    @property
    def worst(self) -> tuple[str, float] | None:
        """The structure whose Dice dropped most (or rose least), with its change."""
        changes = [(after - before, name) for name, (before, after) in self.structures.items()
                   if before is not None and after is not None]
        if not changes:
            return None
        change, name = min(changes)
        return name, change

    def structure_text(self) -> str:
        """``shell 91.0 → 85.0 (-6.0) · core ...`` (Dice points) for the case's detail line."""
        parts = []
        for name, (before, after) in self.structures.items():
            change = "" if before is None or after is None else f" ({dice_points(after - before, signed=True)})"
            parts.append(f"{name} {dice_points(before)} → {dice_points(after)}{change}")
        return " · ".join(parts)


def case_regressions(rows: list[dict[str, Any]]) -> list[CaseRegression]:
    """The backend's rows as :class:`CaseRegression`, structures in the order the rows name them."""
    cases = []
    for row in rows:
        before, after = row.get("before") or {}, row.get("after") or {}
        names = list(dict.fromkeys([*before, *after]))
        cases.append(CaseRegression(str(row["case_id"]), {name: (before.get(name), after.get(name)) for name in names}))
    return cases
