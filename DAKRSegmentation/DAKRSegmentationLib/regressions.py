"""The audit table: per audit case of a site, Dice before and after, its change, and the structure
that lost most, from the backend's per-structure Dice (``GET /sites/{site}/audit-dice``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        """``shell 0.910 → 0.850 (-0.060) · core ...`` for the case's detail line."""
        def number(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        parts = []
        for name, (before, after) in self.structures.items():
            change = "" if before is None or after is None else f" ({after - before:+.3f})"
            parts.append(f"{name} {number(before)} → {number(after)}{change}")
        return " · ".join(parts)


def case_regressions(rows: list[dict[str, Any]]) -> list[CaseRegression]:
    """The backend's rows as :class:`CaseRegression`, structures in the order the rows name them."""
    cases = []
    for row in rows:
        before, after = row.get("before") or {}, row.get("after") or {}
        names = list(dict.fromkeys([*before, *after]))
        cases.append(CaseRegression(str(row["case_id"]), {name: (before.get(name), after.get(name)) for name in names}))
    return cases
