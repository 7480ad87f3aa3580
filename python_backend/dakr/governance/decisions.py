"""Recording gate decisions and sign-offs, and what they allow: each version's status and activation.

Status of a version: ``accepted`` or ``held`` by the gate, ``overridden`` when a held version
was activated with ``--activate always``, then ``approved`` or ``rejected`` by the latest
sign-off; ``unchecked`` for versions made before the gate existed. A held or rejected version is
never activated, except by approving it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dakr.governance import ACTIVATION_MODES
from dakr.governance.gate import GateResult, evaluate_gate
from dakr.governance.policy import policy_in_force
from dakr.governance.strict_json import json_safe
from dakr.governance.tables import reading, writing
from dakr.store import Store, StoreError, VersionInfo
from dakr.store.queries import set_active
from dakr.store.records import now_iso
from dakr.store.runs import activate_if_parent_still_active, activation_summary
from dakr.store.schema import dump_json, load_json

#: Statuses that may not be activated without an approval.
BLOCKED = ("held", "rejected")


@dataclass(frozen=True)
class Signoff:
    """One approval or rejection of a version (never edited or deleted)."""

    version: int
    action: str
    reason: str
    by: str | None
    created: str


def gate_new_version(
    store: Store,
    version: VersionInfo,
    past_sites: Iterable[str],
    activate: str | None,
    provenance: dict[str, Any],
) -> GateResult:
    """Apply the policy in force to a freshly evaluated version, activate it if allowed, record both.

    The gate allows activation by the policy when ``activate`` is ``None`` (accepted and
    ``auto_activate``), or per run with ``"never"``, ``"if-accepted"`` or ``"always"`` (a held
    version activated so is an override). An allowed version is activated only if the active
    version is still its parent (:func:`~dakr.store.runs.activate_if_parent_still_active`);
    ``activated`` says what happened. A version decided before (a resumed run) keeps its decision.
    """
    if activate is not None and activate not in ACTIVATION_MODES:
        raise ValueError(f"activate must be one of {', '.join(ACTIVATION_MODES)} or None (the policy), got {activate!r}")
    recorded = gate_result(store, version.id)
    if recorded is not None:
        return recorded
    with writing(store) as conn:
        policy_id, policy = policy_in_force(conn)
    result = evaluate_gate(store, version.id, version.parent, version.site, past_sites, policy, policy_id)
    accepted = result.verdict == "accepted"
    result.activation = activate or "policy"
    allowed = {
        "policy": accepted and policy.auto_activate,
        "if-accepted": accepted,
        "never": False,
        "always": True,
    }[result.activation]
    if allowed:
        activation = activate_if_parent_still_active(store, version.id, version.parent)
        result.activated = activation.activated
        result.superseded = None if activation.activated else activation.active
    result.override = result.activated and not accepted
    with writing(store) as conn:
        conn.execute(
            "INSERT INTO gate_decisions (version, policy, verdict, activation, detail, created) VALUES (?, ?, ?, ?, ?, ?)",
            (version.id, policy_id, result.verdict, result.activation, dump_json(result.to_dict()), now_iso()),
        )
        conn.execute("INSERT INTO provenance (version, detail) VALUES (?, ?)", (version.id, dump_json(provenance)))
    return result


def activation_outcome(store: Store, version: VersionInfo) -> str:
    """One line for people on whether a new ``version`` is active and, if not, why and how to use it."""
    result = gate_result(store, version.id)
    if result is None or result.activated or (result.superseded is not None and result.verdict == "accepted"):
        return activation_summary(store, version)
    if result.verdict == "held":
        changed = (
            f"the active version changed to {result.superseded} while it trained (that choice is kept) and "
            if result.superseded is not None
            else ""
        )
        return (
            f"version {version.id} was stored but NOT activated: {changed}the gate held it. To use it: "
            f"`dakr approve STORE {version.id} --reason TEXT` or POST /api/v1/models/{version.id}/approve"
        )
    return (
        f"version {version.id} passed the gate but is not active (activation: {result.activation}). To use it: "
        f"`dakr rollback STORE {version.id}` or POST /api/v1/models/{version.id}/activate"
    )


def gate_result(store: Store, version_id: int) -> GateResult | None:
    """The recorded gate decision of a version, ``None`` for versions made before the gate."""
    with reading(store) as conn:
        row = conn.execute("SELECT detail FROM gate_decisions WHERE version = ?", (version_id,)).fetchone()
    return None if row is None else GateResult.from_dict(load_json(row["detail"]))


def gate_outcome(store: Store, version_id: int) -> dict[str, Any] | None:
    """The gate decision as JSON-ready data with its one-line summary and current status."""
    result = gate_result(store, version_id)
    if result is None:
        return None
    return json_safe({
        **result.to_dict(),
        "summary": result.summary(),
        "failing_sites": [check.site for check in result.failing],
        "warnings": result.warnings,
        "status": version_status(store, version_id),
    })


def provenance(store: Store, version_id: int) -> dict[str, Any] | None:
    """The data and run provenance recorded when the version was made."""
    with reading(store) as conn:
        row = conn.execute("SELECT detail FROM provenance WHERE version = ?", (version_id,)).fetchone()
    return None if row is None else load_json(row["detail"])


def signoffs(store: Store, version_id: int | None = None) -> list[Signoff]:
    """Sign-offs in the order they were given, of one version or of all."""
    query = "SELECT * FROM signoffs" + (" WHERE version = ?" if version_id is not None else "") + " ORDER BY seq"
    with reading(store) as conn:
        rows = conn.execute(query, () if version_id is None else (version_id,)).fetchall()
    return [Signoff(row["version"], row["action"], row["reason"], row["by"], row["created"]) for row in rows]


def statuses(store: Store) -> dict[int, str]:
    """Status of every version (see the module docstring)."""
    with reading(store) as conn:
        gate = {row["version"]: (row["verdict"], load_json(row["detail"]).get("override", False))
                for row in conn.execute("SELECT version, verdict, detail FROM gate_decisions")}
        latest = {row["version"]: row["action"] for row in conn.execute("SELECT version, action FROM signoffs ORDER BY seq")}
    result = {}
    for version in store.versions():
        verdict, override = gate.get(version.id, ("unchecked", False))
        result[version.id] = latest.get(version.id) or ("overridden" if override else verdict)
    return result


def version_status(store: Store, version_id: int) -> str:
    """Status of one version."""
    store.version(version_id)
    return statuses(store)[version_id]


def approve(store: Store, version_id: int, reason: str, by: str | None = None) -> VersionInfo:
    """Record an approval of ``version_id`` and activate it (one transaction)."""
    _sign(store, version_id, "approved", reason, by)
    return store.version(version_id)


def reject(store: Store, version_id: int, reason: str, by: str | None = None) -> VersionInfo:
    """Record a rejection of ``version_id``; it stays inactive until someone approves it."""
    if store.version(version_id).active:
        raise StoreError(
            f"version {version_id} is the active version and cannot be rejected while in use. "
            "Fix: activate another version first (`dakr rollback STORE VERSION`), then reject it"
        )
    _sign(store, version_id, "rejected", reason, by)
    return store.version(version_id)


def activate_checked(store: Store, version_id: int) -> VersionInfo:
    """Activate a version (rollback) unless it is held or rejected, which needs an approval first."""
    status = version_status(store, version_id)
    if status in BLOCKED:
        raise StoreError(
            f"version {version_id} is {status} and cannot be activated without a sign-off. "
            f"Fix: `dakr approve STORE {version_id} --reason TEXT` (or POST /api/v1/models/{version_id}/approve)"
        )
    return store.activate(version_id)


def _sign(store: Store, version_id: int, action: str, reason: str, by: str | None) -> None:
    store.version(version_id)
    reason = (reason or "").strip()
    if not reason:
        raise ValueError(f"a reason is required to record that version {version_id} is {action}. Fix: pass --reason TEXT")
    if len(reason) > 4000 or (by is not None and len(by) > 200):
        raise ValueError("the reason may have at most 4000 characters and the name at most 200. Fix: shorten them")
    with writing(store) as conn:
        conn.execute(
            "INSERT INTO signoffs (version, action, reason, by, created) VALUES (?, ?, ?, ?, ?)",
            (version_id, action, reason, (by or "").strip() or None, now_iso()),
        )
        if action == "approved":
            set_active(conn, version_id)
