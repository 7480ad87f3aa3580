"""Change control: the paired bootstrap, the gate after adapt, sign-off, the change record and the policy.

Most tests store untrained tiny versions and record their evaluations by hand, so the gate sees
known per-case Dice values; one test runs the real (tiny) pipeline with a forgetting update.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from dakr import pipeline
from dakr.data.site import discover_site
from dakr.governance.decisions import (
    activate_checked,
    activation_outcome,
    approve,
    gate_new_version,
    gate_result,
    reject,
    signoffs,
    statuses,
)
from dakr.governance.gate import suggest_audit_fraction, suggested_audit_cases
from dakr.governance.policy import Policy, current_policy, set_policy
from dakr.governance.record import change_record
from dakr.governance.statistics import paired_bootstrap
from dakr.evaluation.report import write_report
from dakr.store import EvaluationRecord, Store, StoreError
from dakr.store.schema import DB_NAME

from synthetic import TINY_OVERRIDES
from test_service_support import add_tiny_version, write_site


# -- statistics ----------------------------------------------------------------------------------
def test_bootstrap_lower_bound_matches_the_normal_approximation():
    changes = np.random.default_rng(7).normal(-0.5, 4.0, size=400)
    interval = paired_bootstrap(changes, confidence=0.95, samples=20_000, seed=3)
    standard_error = changes.std(ddof=1) / math.sqrt(changes.size)
    assert interval.mean == pytest.approx(changes.mean())
    assert interval.lower == pytest.approx(changes.mean() - 1.645 * standard_error, abs=0.05)
    assert interval.upper == pytest.approx(changes.mean() + 1.645 * standard_error, abs=0.05)
    assert paired_bootstrap(changes, confidence=0.95, samples=20_000, seed=3) == interval, "seeded: reproducible"


def test_bootstrap_of_two_cases_and_of_one_case():
    two = paired_bootstrap([-3.0, 1.0], confidence=0.95, samples=10_000, seed=0)
    # Resampled means are -3 (p=1/4), -1 (1/2) or 1 (1/4): the 5 % and 95 % quantiles are the extremes.
    assert (two.mean, two.lower, two.upper) == (-1.0, -3.0, 1.0)
    one = paired_bootstrap([2.0], confidence=0.95, samples=10_000, seed=0)
    assert one.mean == 2.0 and math.isnan(one.lower) and one.half_width == math.inf


# -- a store with injected evaluations -----------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Sites A and B of 6 cases with 3 audit cases each; no versions yet."""
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, n_cases=6, seed=seed)), audit_fraction=0.5)
    return store


def inject(store: Store, version: int, site: str, dice: list[float]) -> None:
    """Record per-audit-case Dice (fractions, both classes equal) of ``version`` on ``site``."""
    cases = store.cases(site, "audit")
    assert len(cases) == len(dice)
    store.record_evaluations(
        [EvaluationRecord(version, site, c.case_id, {"A": d, "B": d}, {"A": 2.0, "B": 2.0}) for c, d in zip(cases, dice)]
    )


def gated(store: Store, site: str, parent: int | None, evaluations: dict[str, list[float]], activate: str | None = None):
    """Store a version on ``site``, inject its evaluations and gate it (the gate activates it if allowed)."""
    version = add_tiny_version(store, site, parent, activate=False)
    for evaluated_site, dice in evaluations.items():
        inject(store, version.id, evaluated_site, dice)
    past = [store.version(parent).site] if parent is not None else []
    result = gate_new_version(store, version, past, activate, {"note": "injected"})
    return store.version(version.id), result


@pytest.fixture
def base(store: Store):
    """Version 1 on A (accepted and active) with Dice 0.80 / 0.82 / 0.84 on A and 0.30 on B."""
    version, result = gated(store, "A", None, {"A": [0.80, 0.82, 0.84], "B": [0.30, 0.30, 0.30]})
    assert result.verdict == "accepted" and store.active_version().id == version.id
    return version


def test_an_update_that_forgets_a_past_site_is_held_and_the_active_version_stays(store, base):
    version, result = gated(store, "B", base.id, {"A": [0.70, 0.74, 0.69], "B": [0.80, 0.80, 0.81]})
    assert result.verdict == "held" and not result.activated
    assert [check.site for check in result.failing] == ["A"]
    past = result.failing[0]
    assert past.mean_change == pytest.approx(-11.0) and past.lower <= -2.0
    assert "A (mean change -11.0" in result.summary()
    assert store.active_version().id == base.id
    assert statuses(store)[version.id] == "held"
    with pytest.raises(StoreError, match="held"):
        activate_checked(store, version.id)


def test_an_update_within_the_margin_is_accepted_and_activated(store, base):
    version, result = gated(store, "B", base.id, {"A": [0.795, 0.825, 0.83], "B": [0.80, 0.80, 0.81]})
    assert result.verdict == "accepted", result.summary()
    assert store.active_version().id == version.id and result.warnings == []


def test_new_site_must_not_get_worse_than_the_parent(store, base):
    version, result = gated(store, "B", base.id, {"A": [0.80, 0.82, 0.84], "B": [0.29, 0.29, 0.29]})
    assert result.verdict == "held" and [check.site for check in result.failing] == ["B"]


def test_activation_overrides(store, base):
    forgetting = {"A": [0.50, 0.50, 0.50], "B": [0.80, 0.80, 0.80]}
    never, result = gated(store, "B", base.id, {"A": [0.80, 0.82, 0.84], "B": [0.80, 0.80, 0.80]}, activate="never")
    assert result.verdict == "accepted" and not result.activated and store.active_version().id == base.id
    forced, result = gated(store, "B", base.id, forgetting, activate="always")
    assert result.verdict == "held" and result.override and store.active_version().id == forced.id
    assert statuses(store)[forced.id] == "overridden" and "override" in result.summary()
    set_policy(store, {"auto_activate": "false"})
    quiet, result = gated(store, "B", base.id, {"A": [0.80, 0.82, 0.84], "B": [0.80, 0.80, 0.80]})
    assert result.verdict == "accepted" and not result.activated
    with pytest.raises(ValueError, match="activate must be one of"):
        gated(store, "B", base.id, forgetting, activate="sometimes")


def test_the_gate_activates_only_over_the_parent_and_decides_once(store, base):
    within = {"A": [0.80, 0.82, 0.84], "B": [0.80, 0.80, 0.80]}
    newer, _ = gated(store, "B", base.id, within)
    assert newer.active
    # Trained from the base while ``newer`` became active: accepted, or even forced, it stays inactive.
    for activate in (None, "always"):
        late, result = gated(store, "B", base.id, within, activate=activate)
        assert result.verdict == "accepted" and not result.activated and result.superseded == newer.id
        assert store.active_version().id == newer.id and not late.active
        assert f"not activated: the active version changed to {newer.id}" in result.summary()
        assert f"rollback STORE {late.id}" in activation_outcome(store, late)
        assert gate_new_version(store, late, ["A"], "always", {}) == result, "a decided version keeps its decision"
    held, result = gated(store, "B", base.id, {"A": [0.50, 0.50, 0.50], "B": [0.80, 0.80, 0.80]}, activate="always")
    assert result.verdict == "held" and not result.override and statuses(store)[held.id] == "held"
    outcome = activation_outcome(store, held)
    assert f"changed to {newer.id}" in outcome and "the gate held it" in outcome and f"approve STORE {held.id}" in outcome


def test_approve_activates_and_records_the_reason(store, base):
    held, _ = gated(store, "B", base.id, {"A": [0.50, 0.50, 0.50], "B": [0.80, 0.80, 0.80]})
    approved = approve(store, held.id, "site A is no longer served; checked 3 cases by eye", by="Dr. Rao")
    assert approved.active and store.active_version().id == held.id
    assert statuses(store)[held.id] == "approved"
    [signoff] = signoffs(store, held.id)
    assert (signoff.action, signoff.reason, signoff.by) == ("approved", "site A is no longer served; checked 3 cases by eye", "Dr. Rao")
    with pytest.raises(ValueError, match="reason is required"):
        approve(store, held.id, "   ")
    with sqlite3.connect(store.path / DB_NAME) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE signoffs SET reason = 'edited'")
    with sqlite3.connect(store.path / DB_NAME) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM signoffs")


def test_reject_keeps_the_version_inactive(store, base):
    held, _ = gated(store, "B", base.id, {"A": [0.50, 0.50, 0.50], "B": [0.80, 0.80, 0.80]})
    rejected = reject(store, held.id, "forgets site A", by="QA")
    assert not rejected.active and store.active_version().id == base.id
    assert statuses(store)[held.id] == "rejected"
    with pytest.raises(StoreError, match="rejected"):
        activate_checked(store, held.id)
    with pytest.raises(StoreError, match="active version and cannot be rejected"):
        reject(store, base.id, "no")
    approve(store, held.id, "re-reviewed with new evidence")
    assert [s.action for s in signoffs(store, held.id)] == ["rejected", "approved"], "history only grows"


def test_power_warning_for_one_audit_case(tmp_path):
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, n_cases=4, seed=seed)), audit_fraction=0.25)
    base, _ = gated(store, "A", None, {"A": [0.8], "B": [0.3]})
    version, result = gated(store, "B", base.id, {"A": [0.81], "B": [0.8]})
    check = next(check for check in result.sites if check.site == "A")
    assert check.power_warning is not None and "only 1 audit case" in check.power_warning
    assert result.verdict == "held", "one case cannot show non-inferiority"
    assert "power warning: A: only 1 audit case" in "\n".join(pipeline_gate_lines(store, version.id))


def test_power_warning_when_the_interval_is_wider_than_the_margin(store, base):
    _, result = gated(store, "B", base.id, {"A": [0.90, 0.72, 0.86], "B": [0.80, 0.80, 0.81]})
    [check] = [check for check in result.sites if check.site == "A"]
    assert check.power_warning is not None and "wider than the margin" in check.power_warning


def test_audit_fraction_suggestion():
    policy = Policy()
    assert suggested_audit_cases(policy) == 3  # (1.645 * 2 / 2)^2 = 2.7
    assert "--audit-fraction 0.38" in suggest_audit_fraction(8, policy)
    assert "too few" in suggest_audit_fraction(3, policy)


def pipeline_gate_lines(store: Store, version_id: int) -> list[str]:
    from dakr.governance.display import gate_table

    return gate_table(gate_result(store, version_id))


# -- policy --------------------------------------------------------------------------------------
def test_policy_round_trips_and_is_versioned(store):
    assert current_policy(store).id is None and current_policy(store).policy == Policy()
    first = set_policy(store, {"margin": "1.5", "per_structure": "true", "new_site_min_dice": "70"})
    second = set_policy(store, {"hd95_max_increase_mm": "3", "new_site_min_dice": "null"})
    assert (first.id, second.id) == (1, 2)
    assert second.policy == Policy(margin=1.5, per_structure=True, new_site_min_dice=None, hd95_max_increase_mm=3.0)
    assert Policy.from_dict(second.policy.to_dict()) == second.policy
    assert current_policy(Store.open(store.path)).policy == second.policy
    for updates, message in (
        ({"margins": "1"}, "unknown policy key"),
        ({"margin": "-1"}, "out of range"),
        ({"auto_activate": "1"}, "true or false"),
        ({"bootstrap_samples": "1.5"}, "integer"),
        ({"margin": "abc"}, "cannot read"),
    ):
        with pytest.raises(ValueError, match=message):
            set_policy(store, updates)
    assert current_policy(store).id == 2, "refused changes store nothing"


def test_per_structure_and_hd95_limits(store, base):
    set_policy(store, {"per_structure": "true", "hd95_max_increase_mm": "1"})
    version = add_tiny_version(store, "B", base.id, activate=False)
    cases = store.cases("A", "audit")
    store.record_evaluations(
        [EvaluationRecord(version.id, "A", c.case_id, {"A": d + 0.04, "B": d - 0.05}, {"A": 2.0, "B": 4.0})
         for c, d in zip(cases, [0.80, 0.82, 0.84])]
    )
    inject(store, version.id, "B", [0.8, 0.8, 0.8])
    result = gate_new_version(store, version, ["A"], None, {})
    [check] = result.failing
    assert check.site == "A" and set(check.structures) == {"A", "B"}
    assert any(reason.startswith("B: mean change -5.0") for reason in check.reasons), check.reasons
    assert any("HD95 rose by 1.0 mm" in reason for reason in check.reasons) is False
    assert check.hd95_change == pytest.approx(1.0)


# -- change record -------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_record_of_a_real_update_hashes_the_stored_files(registered_store, tmp_path):
    store = registered_store
    base = pipeline.adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    record = change_record(store, base.id)
    provenance = record["provenance"]
    cases = {(c.site, c.case_id): c for site in ("siteA", "siteB", "siteC") for c in store.cases(site)}
    assert {entry["site"] for entry in provenance["training_cases"]} == {"siteA"}
    assert len(provenance["training_cases"]) == len(store.cases("siteA", "train"))
    assert len(provenance["audit_cases"]) == sum(len(store.cases(s, "audit")) for s in ("siteA", "siteB", "siteC"))
    for entry in provenance["training_cases"] + provenance["audit_cases"]:
        case = cases[(entry["site"], entry["case_id"])]
        assert entry["image_sha256"] == sha256(case.image_path) and entry["label_sha256"] == sha256(case.label_path)
    assert provenance["package_version"] and provenance["device"] == "cpu" and provenance["wall_time_s"] > 0
    assert record["config"]["train"]["seed"] == provenance["seeds"]["train"] == 0
    assert record["gate"]["verdict"] == "accepted" and record["policy"]["values"] == Policy().to_dict()
    assert {site["site"] for site in record["evaluation"]} == {"siteA", "siteB", "siteC"}
    assert all("dice" in case and "hd95" in case for site in record["evaluation"] for case in site["cases"])
    approve(store, base.id, "base model <reviewed>", by="QA")
    page = write_report(store, tmp_path / "report", cases_per_site=0).read_text()
    assert 'id="change-control"' in page and 'id="gate-v1"' in page
    assert "ACCEPTED: version 1 passed every check" in page and "base model &lt;reviewed&gt;" in page


@pytest.mark.slow
def test_a_forgetting_finetune_run_is_held_by_the_pipeline(registered_store, monkeypatch):
    """Tiny real training; the new version's siteA evaluation is then degraded, as forgetting would."""
    store = registered_store
    base = pipeline.adapt(store, "siteA", strategy="finetune", overrides=TINY_OVERRIDES)
    real_evaluate = pipeline.evaluate_version

    def forgetting_evaluate(store_, version_id, **kwargs):
        result = real_evaluate(store_, version_id, **kwargs)
        if version_id != base.id:
            store_.record_evaluations(
                [EvaluationRecord(r.version, r.site, r.case_id, {k: v * 0.5 for k, v in r.dice.items()}, r.hd95)
                 for r in store_.evaluations(version_id, "siteA")]
            )
        return result

    monkeypatch.setattr(pipeline, "evaluate_version", forgetting_evaluate)
    forgetting = pipeline.adapt(store, "siteB", strategy="finetune", overrides=TINY_OVERRIDES)
    assert not forgetting.active and store.active_version().id == base.id
    result = gate_result(store, forgetting.id)
    assert result.verdict == "held" and "siteA" in [check.site for check in result.failing]
    assert statuses(store) == {base.id: "accepted", forgetting.id: "held"}


def test_demo_summary_uses_the_active_lineage_sites_when_updates_were_held(capsys):
    from dakr.demo.run import print_summary

    matrix = np.array([[80.0, 10.0, 20.0], [79.0, 30.0, 70.0]])  # v2 on site b was held: stages learned a, then c
    print_summary(["a", "b", "c"], ["v1 (a)", "v3 (c)"], matrix, ["a", "c"])
    assert "ACC 74.5   BWT -1.0 over a, c" in capsys.readouterr().out


def test_power_warning_below_the_planned_number_of_audit_cases(tmp_path):
    store = Store.init(tmp_path / "store")
    for name, seed in (("A", 0), ("B", 1)):
        store.add_site(name, discover_site(write_site(tmp_path / name, n_cases=4, seed=seed)), audit_fraction=0.5)
    base, _ = gated(store, "A", None, {"A": [0.8, 0.8], "B": [0.3, 0.3]})
    _, result = gated(store, "B", base.id, {"A": [0.81, 0.805], "B": [0.8, 0.8]})
    assert result.verdict == "accepted"
    assert result.warnings == ["A: only 2 audit cases (the policy's planning asks for 3): a bootstrap over so few "
                               "cases can only reuse the changes it saw, so its interval is optimistic"]
