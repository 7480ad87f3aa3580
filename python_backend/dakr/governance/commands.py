"""The change-control verbs of ``dakr``: policy, approve, reject, record, and the gate printout."""

from __future__ import annotations

import argparse
import json

from dakr.governance.decisions import approve, gate_result, reject
from dakr.governance.display import gate_table
from dakr.governance.gate import suggest_audit_fraction
from dakr.governance.policy import current_policy, set_policy
from dakr.governance.record import change_record, render_record
from dakr.store import Store


def print_gate(store: Store, version_id: int) -> None:
    """Print the gate table of a version; its last line is the verdict."""
    result = gate_result(store, version_id)
    if result is None:
        print(f"version {version_id} has no gate decision (made before change control)")
        return
    print("\n".join(gate_table(result)))


def print_audit_advice(store: Store, n_cases: int) -> None:
    """After registering a site: how large an audit split makes the policy's margin testable."""
    advice = suggest_audit_fraction(n_cases, current_policy(store).policy)
    if advice is not None:
        print(f"note: {advice}")


def cmd_policy(args: argparse.Namespace) -> int:
    store = Store.open(args.store)
    if args.set:
        updates = dict(_key_value(text) for text in args.set)
        stored = set_policy(store, updates)
        print(f"stored policy version {stored.id}")
    else:
        stored = current_policy(store)
    origin = "defaults (none stored yet)" if stored.id is None else f"version {stored.id}, set {stored.created}"
    print(f"acceptance policy: {origin}")
    for key, value in stored.policy.to_dict().items():
        print(f"  {key} = {json.dumps(value)}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    version = approve(Store.open(args.store), args.version, args.reason, args.by)
    print(f"version {version.id} approved and now active")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    version = reject(Store.open(args.store), args.version, args.reason, args.by)
    print(f"version {version.id} rejected; it stays inactive")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    record = change_record(Store.open(args.store), args.version)
    print(json.dumps(record, indent=2) if args.json else render_record(record))
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r} must look like KEY=VALUE, e.g. margin=1.5")
    return key.strip(), value.strip()
