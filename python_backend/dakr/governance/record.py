"""The change record of a model version: everything needed to trace and justify the change.

:func:`change_record` gathers lineage, configuration, seeds, software, device, wall time, data
provenance (case ids and SHA-256 of every file used, buffer composition), the full per-site and
per-case evaluation with intervals, the policy in force, the gate verdict and every sign-off.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dakr.governance.decisions import gate_result, provenance, signoffs, version_status
from dakr.governance.display import gate_table
from dakr.governance.gate import GateResult
from dakr.governance.policy import Policy
from dakr.governance.strict_json import json_safe
from dakr.governance.tables import policy_by_id, reading
from dakr.store import Store


def change_record(store: Store, version_id: int) -> dict[str, Any]:
    """The change record of ``version_id`` as strict JSON data (missing parts are ``None``; see :func:`json_safe`)."""
    version = store.version(version_id)
    gate = gate_result(store, version_id)
    policy = None
    if gate is not None and gate.policy_id is not None:
        with reading(store) as conn:
            policy_id, created, values = policy_by_id(conn, gate.policy_id)
        policy = {"id": policy_id, "created": created, "values": Policy.from_dict(values).to_dict()}
    return json_safe({
        "version": version.id,
        "parent": version.parent,
        "site": version.site,
        "strategy": version.strategy,
        "created": version.created,
        "active": version.active,
        "status": version_status(store, version_id),
        "config": version.config,
        "provenance": provenance(store, version_id),
        "evaluation": _evaluation(store, version_id),
        "policy": policy,
        "gate": None if gate is None else gate.to_dict(),
        "signoffs": [asdict(signoff) for signoff in signoffs(store, version_id)],
    })


def _evaluation(store: Store, version_id: int) -> list[dict[str, Any]]:
    """Per site: mean foreground Dice and, per audit case, Dice and HD95 of every class."""
    sites = []
    for info in store.sites():
        audit = {case.case_id for case in store.cases(info.name, "audit")}
        cases = [
            {"case_id": r.case_id, "dice": r.dice, "hd95": r.hd95}
            for r in store.evaluations(version_id, info.name)
            if r.case_id in audit
        ]
        if cases:
            sites.append({"site": info.name, "mean_dice": store.site_dice(version_id, info.name), "cases": cases})
    return sites


def render_record(record: dict[str, Any]) -> str:
    """The change record as readable text (``dakr record``)."""
    lines = [
        f"change record of version {record['version']}",
        f"  parent {record['parent'] if record['parent'] is not None else '- (base model)'}, site {record['site']}, "
        f"strategy {record['strategy']}, created {record['created']}",
        f"  status {record['status']}{', active' if record['active'] else ''}",
    ]
    prov = record["provenance"]
    if prov is None:
        lines.append("  provenance: not recorded (version made before change control)")
    else:
        lines += [
            f"  software dakr {prov['package_version']} (source revision {prov['source_revision'] or 'unknown'}), "
            f"torch {prov['torch_version']}",
            f"  device {prov['device']}, wall time {prov['wall_time_s']:.1f} s",
            f"  seeds: training {prov['seeds']['train']}, split {prov['seeds']['split']}",
            f"  trained on sites {', '.join(prov['training_sites'])}; replayed buffer {prov['buffer_replayed'] or 'none'}; "
            f"stored buffer {prov['buffer_stored'] or 'none'}",
            "  data (SHA-256 of image / label):",
        ]
        for part in ("training_cases", "audit_cases"):
            for case in prov[part]:
                lines.append(
                    f"    {part.split('_')[0]:<8} {case['site']}/{case['case_id']}  {case['image_sha256']}  {case['label_sha256']}"
                )
    config = record["config"]
    lines.append("  config: " + ", ".join(f"{section}={values}" for section, values in config.items()))
    if record["policy"] is not None:
        values = ", ".join(f"{key}={value}" for key, value in record["policy"]["values"].items())
        lines.append(f"  policy version {record['policy']['id']} ({record['policy']['created']}): {values}")
    if record["gate"] is not None:
        lines += ["", *gate_table(GateResult.from_dict(record["gate"]), per_case=True)]
    lines.append("")
    lines.append("sign-offs:" if record["signoffs"] else "sign-offs: none")
    for signoff in record["signoffs"]:
        lines.append(f"  {signoff['created']}  {signoff['action']} by {signoff['by'] or 'unnamed'}: {signoff['reason']}")
    return "\n".join(lines)
