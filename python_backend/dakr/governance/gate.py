"""The gate after every adapt: apply the acceptance policy to a new version and its parent.

Past sites (those the parent's lineage was trained on) must show non-inferiority: the one-sided
lower confidence bound of the mean paired per-case Dice change (new - parent, Dice points) lies
above ``-margin``. The new site must reach the policy's minimum Dice and gain. Sites that no
version of the lineage was trained on are shown but not gated. A version that fails is *held*.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from dakr.governance.policy import Policy
from dakr.governance.statistics import PairedInterval, paired_bootstrap
from dakr.store import EvaluationRecord, Store
from dakr.store.aggregate import foreground_dice, mean_skipping_nan

Verdict = Literal["accepted", "held"]
POINTS = 100.0


@dataclass
class CaseChange:
    """One audit case's mean foreground Dice (points) under the parent and the new version."""

    case_id: str
    parent: float | None
    new: float | None

    @property
    def change(self) -> float | None:
        return None if self.parent is None or self.new is None else self.new - self.parent


@dataclass
class SiteCheck:
    """The gate's finding on one site (Dice in points, HD95 in mm)."""

    site: str
    #: ``"past"`` (non-inferiority), ``"new"`` (the adapted site) or ``"other"`` (shown, not gated).
    role: str
    parent_dice: float | None
    new_dice: float | None
    n_cases: int
    mean_change: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    #: ``"pass"``, ``"fail"``, ``"not tested"`` or ``"not gated"``.
    verdict: str
    reasons: list[str] = field(default_factory=list)
    power_warning: str | None = None
    hd95_change: float | None = None
    structures: dict[str, dict[str, Any]] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GateResult:
    """The gate's decision on one version; stored as JSON with the version."""

    version: int
    parent: int | None
    site: str
    policy_id: int | None
    confidence: float
    verdict: Verdict
    sites: list[SiteCheck]
    #: ``"policy"`` or the per-run override (``never``, ``if-accepted``, ``always``).
    activation: str = "policy"
    activated: bool = False
    #: A held version was activated by ``always``.
    override: bool = False
    #: The gate allowed activation but the active version had changed to this one meanwhile (kept).
    superseded: int | None = None

    @property
    def failing(self) -> list[SiteCheck]:
        return [check for check in self.sites if check.verdict == "fail"]

    @property
    def warnings(self) -> list[str]:
        return [f"{check.site}: {check.power_warning}" for check in self.sites if check.power_warning]

    def summary(self) -> str:
        """One line: the verdict, the failing sites and what activation did."""
        if self.verdict == "accepted":
            text = f"ACCEPTED: version {self.version} passed every check"
        else:
            failed = "; ".join(f"{check.site} ({' '.join(check.reasons)})" for check in self.failing)
            text = f"HELD: version {self.version} failed on {failed}"
        if self.override:
            return text + "; activated anyway by --activate always (recorded as an override)"
        if self.superseded is not None:
            return text + f"; not activated: the active version changed to {self.superseded} while it trained"
        return text + ("; activated" if self.activated else "; not activated")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        return cls(**{**data, "sites": [SiteCheck(**site) for site in data["sites"]]})


def case_changes(store: Store, parent: int | None, version: int, site: str) -> list[CaseChange]:
    """Per audit case of ``site``: mean foreground Dice (points) of the parent and the new version."""
    audit = [case.case_id for case in store.cases(site, "audit")]
    background = _background(store)
    new = _per_case(store.evaluations(version, site), background)
    old = _per_case(store.evaluations(parent, site), background) if parent is not None else {}
    return [CaseChange(case_id, old.get(case_id), new.get(case_id)) for case_id in audit if case_id in new or case_id in old]


def suggested_audit_cases(policy: Policy) -> int:
    """Audit cases per site for which the margin is testable if changes spread by ``planning_sd``."""
    z = NormalDist().inv_cdf(policy.confidence)
    return max(2, math.ceil((z * policy.planning_sd / policy.margin) ** 2))


def suggest_audit_fraction(n_cases: int, policy: Policy) -> str | None:
    """Advice for registering a site of ``n_cases`` cases, or ``None`` when the default split suffices."""
    needed = suggested_audit_cases(policy)
    if needed >= n_cases:
        return (
            f"{n_cases} cases are too few to keep {needed} audit cases and still train; the gate will warn that "
            f"a drop of {policy.margin:g} Dice points cannot be detected on this site"
        )
    fraction = math.ceil(needed / n_cases * 100) / 100
    return (
        f"to detect a drop of {policy.margin:g} Dice points the gate needs about {needed} audit cases per site; "
        f"with {n_cases} cases use --audit-fraction {fraction:.2f} or more"
    )


def evaluate_gate(
    store: Store, version: int, parent: int | None, site: str, past_sites: Iterable[str], policy: Policy, policy_id: int | None
) -> GateResult:
    """Apply ``policy`` to the stored audit evaluations of ``version`` and ``parent`` (nothing is written)."""
    past = [name for name in dict.fromkeys(past_sites) if name != site]
    checks = []
    for info in store.sites():
        role = "new" if info.name == site else "past" if info.name in past else "other"
        checks.append(_check_site(store, version, parent, info.name, role, policy))
    verdict: Verdict = "held" if any(check.verdict == "fail" for check in checks) else "accepted"
    return GateResult(version, parent, site, policy_id, policy.confidence, verdict, checks)


def _check_site(store: Store, version: int, parent: int | None, site: str, role: str, policy: Policy) -> SiteCheck:
    cases = case_changes(store, parent, version, site)
    paired = [case.change for case in cases if case.change is not None]
    interval = _interval(paired, policy)
    check = SiteCheck(
        site=site,
        role=role,
        parent_dice=_mean(case.parent for case in cases),
        new_dice=_mean(case.new for case in cases),
        n_cases=len(paired),
        mean_change=_finite(interval.mean),
        lower=_finite(interval.lower),
        upper=_finite(interval.upper),
        margin=policy.margin if role == "past" else None,
        verdict="not gated" if role == "other" else "pass",
        cases=[{**asdict(case), "change": case.change} for case in cases],
    )
    if role == "past":
        _non_inferiority(store, check, interval, version, parent, policy)
    elif role == "new":
        _new_site(check, parent, policy)
    return check


def _non_inferiority(
    store: Store, check: SiteCheck, interval: PairedInterval, version: int, parent: int | None, policy: Policy
) -> None:
    if interval.n == 0:
        check.verdict = "not tested"
        check.reasons.append("no audit case was evaluated by both versions (purged site?)")
        return
    needed = suggested_audit_cases(policy)
    if interval.n < 2:
        check.power_warning = (
            f"only {interval.n} audit case: the spread of the change cannot be estimated, so a drop of "
            f"{policy.margin:g} Dice points cannot be ruled out; register sites with at least {needed} audit cases"
        )
    elif interval.half_width > policy.margin:
        check.power_warning = (
            f"the interval is wider than the margin (mean minus lower bound {interval.half_width:.1f} > "
            f"{policy.margin:g} Dice points): {interval.n} audit cases are too few to tell a drop of the margin "
            f"from no change; about {needed} or more are needed"
        )
    elif interval.n < needed:
        check.power_warning = (
            f"only {interval.n} audit cases (the policy's planning asks for {needed}): a bootstrap over so few "
            "cases can only reuse the changes it saw, so its interval is optimistic"
        )
    _require_bound(check, "", interval, policy)
    if policy.per_structure:
        for name, structure in _structure_intervals(store, version, parent, check.site, policy).items():
            check.structures[name] = asdict(structure)
            _require_bound(check, f"{name}: ", structure, policy)
    if policy.hd95_max_increase_mm is not None and parent is not None:
        check.hd95_change = _hd95_change(store, version, parent, check.site)
        if check.hd95_change is not None and check.hd95_change > policy.hd95_max_increase_mm:
            check.verdict = "fail"
            check.reasons.append(
                f"HD95 rose by {check.hd95_change:.1f} mm on average > limit {policy.hd95_max_increase_mm:g} mm"
            )


def _require_bound(check: SiteCheck, what: str, interval: PairedInterval, policy: Policy) -> None:
    if interval.n == 0:
        return
    if interval.n < 2:
        check.verdict = "fail"
        check.reasons.append(f"{what}non-inferiority not shown: 1 audit case gives no confidence bound")
    elif interval.lower <= -policy.margin:
        check.verdict = "fail"
        check.reasons.append(
            f"{what}mean change {interval.mean:+.1f}, lower bound {interval.lower:+.1f} <= -{policy.margin:g} Dice points"
        )


def _new_site(check: SiteCheck, parent: int | None, policy: Policy) -> None:
    if check.new_dice is None:
        check.verdict = "not tested"
        check.reasons.append("the new version was not evaluated on this site's audit cases")
        return
    if policy.new_site_min_dice is not None and check.new_dice < policy.new_site_min_dice:
        check.verdict = "fail"
        check.reasons.append(f"Dice {check.new_dice:.1f} < minimum {policy.new_site_min_dice:g}")
    if parent is not None and policy.new_site_min_gain is not None and check.mean_change is not None:
        if check.mean_change < policy.new_site_min_gain:
            check.verdict = "fail"
            check.reasons.append(
                f"mean change {check.mean_change:+.1f} < required gain {policy.new_site_min_gain:+g} Dice points"
            )


def _interval(changes: list[float], policy: Policy) -> PairedInterval:
    return paired_bootstrap(
        changes, confidence=policy.confidence, samples=policy.bootstrap_samples, seed=policy.bootstrap_seed
    )


def _structure_intervals(
    store: Store, version: int, parent: int | None, site: str, policy: Policy
) -> dict[str, PairedInterval]:
    if parent is None:
        return {}
    background = _background(store)
    new = {r.case_id: foreground_dice(r.dice, background) for r in store.evaluations(version, site)}
    old = {r.case_id: foreground_dice(r.dice, background) for r in store.evaluations(parent, site)}
    audit = [case.case_id for case in store.cases(site, "audit") if case.case_id in new and case.case_id in old]
    names = sorted({name for case_id in audit for name in new[case_id]})
    intervals = {}
    for name in names:
        changes = [
            POINTS * (new[c][name] - old[c][name])
            for c in audit
            if not math.isnan(new[c].get(name, math.nan)) and not math.isnan(old[c].get(name, math.nan))
        ]
        intervals[name] = _interval(changes, policy)
    return intervals


def _hd95_change(store: Store, version: int, parent: int, site: str) -> float | None:
    """Mean over paired audit cases of the change of the case's mean HD95 (inf if a class was missed)."""
    background = _background(store)
    new = {r.case_id: _case_hd95(r, background) for r in store.evaluations(version, site)}
    old = {r.case_id: _case_hd95(r, background) for r in store.evaluations(parent, site)}
    changes = []
    for case in store.cases(site, "audit"):
        before, after = old.get(case.case_id), new.get(case.case_id)
        if before is None or after is None:
            continue
        changes.append(0.0 if math.isinf(before) and math.isinf(after) else after - before)
    return sum(changes) / len(changes) if changes else None


def _case_hd95(record: EvaluationRecord, background: set[str]) -> float | None:
    values = [value for name, value in record.hd95.items() if name not in background and not math.isnan(value)]
    if any(math.isinf(value) for value in values):
        return math.inf
    return sum(values) / len(values) if values else None


def _per_case(records: list[EvaluationRecord], background: set[str]) -> dict[str, float]:
    means = {r.case_id: mean_skipping_nan(foreground_dice(r.dice, background).values()) for r in records}
    return {case_id: POINTS * mean for case_id, mean in means.items() if mean is not None}


def _background(store: Store) -> set[str]:
    return {name for name, value in (store.label_names or {}).items() if value == 0}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [value for value in values if value is not None]
    return sum(kept) / len(kept) if kept else None


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
