"""The gate's findings as text: the table ``dakr adapt`` prints and the change record shows."""

from __future__ import annotations

from dakr.governance.gate import GateResult, SiteCheck


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def change_text(check: SiteCheck) -> str:
    """``mean [lower, upper]`` of the paired change, or the bare mean when no interval exists."""
    if check.mean_change is None:
        return "-"
    if check.lower is None:
        return f"{check.mean_change:+.1f} (n={check.n_cases}, no interval)"
    return f"{check.mean_change:+.1f} [{check.lower:+.1f}, {check.upper:+.1f}] (n={check.n_cases})"


def gate_table(result: GateResult, *, per_case: bool = False) -> list[str]:
    """Lines of the gate table; the last line is the verdict."""
    level = round(100 * (2 * result.confidence - 1))
    parent = f"v{result.parent}" if result.parent is not None else "none (base model)"
    lines = [
        f"gate of version {result.version} (parent {parent}, policy version {result.policy_id}); Dice in points, "
        f"change = new - parent per audit case, [{level} % bootstrap interval; its lower end is the one-sided "
        f"{round(100 * result.confidence)} % bound]",
        f"{'site':<22}{'role':<6}{'parent':>8}{'new':>8}  {'mean change [interval]':<34}{'margin':>8}  verdict",
    ]
    for check in result.sites:
        margin = "-" if check.margin is None else f"-{check.margin:g}"
        lines.append(
            f"{check.site[:21]:<22}{check.role:<6}{_points(check.parent_dice):>8}{_points(check.new_dice):>8}  "
            f"{change_text(check):<34}{margin:>8}  {check.verdict}"
        )
        for name, structure in check.structures.items():
            lower = "-" if structure["n"] < 2 else f"{structure['lower']:+.1f}"
            lines.append(f"{'':<28}{name}: mean {structure['mean']:+.1f}, lower bound {lower}")
        if per_case:
            for case in check.cases:
                lines.append(
                    f"{'':<28}{case['case_id']}: {_points(case['parent'])} -> {_points(case['new'])} "
                    f"({_points(case['change'], signed=True)})"
                )
    for warning in result.warnings:
        lines.append(f"power warning: {warning}")
    lines.append(result.summary())
    return lines
