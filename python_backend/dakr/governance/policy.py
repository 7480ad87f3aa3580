"""The acceptance policy: what a new model version must show before it is used.

The policy is JSON stored in the store and versioned: every change adds a new version, and each
gate decision names the version it applied. Dice figures are in Dice points (Dice x 100).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

from dakr.governance.tables import insert_policy, latest_policy, reading, writing
from dakr.store import Store, StoreError


@dataclass(frozen=True)
class Policy:
    """Acceptance criteria of a model update (see the README section "Change control")."""

    #: Non-inferiority margin on every past site: the lower bound of the mean paired Dice change
    #: (new - parent, Dice points) must lie above ``-margin``.
    margin: float = 2.0
    #: Level of the one-sided lower confidence bound.
    confidence: float = 0.95
    bootstrap_samples: int = 10_000
    bootstrap_seed: int = 0
    #: Also apply the margin to each structure (foreground label) on its own.
    per_structure: bool = False
    #: New site: mean Dice (points) of the new version must be at least this (``None``: no minimum) ...
    new_site_min_dice: float | None = None
    #: ... and at least the parent's plus this many points (0: no worse than the parent).
    new_site_min_gain: float | None = 0.0
    #: Past sites: the mean paired HD95 change (mm) must not exceed this (``None``: not checked).
    hd95_max_increase_mm: float | None = None
    #: Activate a version that passes; one that fails is always held.
    auto_activate: bool = True
    #: Assumed spread (standard deviation, Dice points) of per-case changes, used to suggest how
    #: many audit cases make the margin testable.
    planning_sd: float = 2.0

    def validate(self) -> Policy:
        """Return ``self`` or raise ``ValueError`` naming the bad key and the allowed range."""
        checks = {
            "margin": self.margin > 0,
            "confidence": 0.5 < self.confidence < 1.0,
            "bootstrap_samples": 100 <= self.bootstrap_samples <= 1_000_000,
            "new_site_min_dice": self.new_site_min_dice is None or 0 <= self.new_site_min_dice <= 100,
            "hd95_max_increase_mm": self.hd95_max_increase_mm is None or self.hd95_max_increase_mm >= 0,
            "planning_sd": self.planning_sd > 0,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"policy value out of range: {', '.join(f'{key}={getattr(self, key)!r}' for key in bad)}. "
                "Fix: margin > 0 (Dice points), 0.5 < confidence < 1, 100 <= bootstrap_samples <= 1000000, "
                "0 <= new_site_min_dice <= 100, hd95_max_increase_mm >= 0, planning_sd > 0"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """A policy from stored JSON; keys this code does not know are an error."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise StoreError(f"the stored policy has unknown keys {unknown}. Fix: use the dakr release that wrote it")
        return cls(**data).validate()

    def with_updates(self, updates: dict[str, str]) -> Policy:
        """A copy with ``KEY=VALUE`` texts applied (values are JSON: numbers, true/false, null)."""
        values = self.to_dict()
        for key, text in updates.items():
            if key not in values:
                raise ValueError(f"unknown policy key {key!r}. Known keys: {', '.join(values)}")
            values[key] = _coerce(key, text, dataclasses.fields(self))
        return Policy(**values).validate()


def _coerce(key: str, text: str, fields: tuple[dataclasses.Field, ...]) -> Any:
    field_type = str(next(f.type for f in fields if f.name == key))
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"policy {key}: cannot read {text!r}. Fix: give a number, true/false or null") from None
    if value is None and "None" in field_type:
        return None
    if field_type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"policy {key} must be true or false, got {text!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"policy {key} must be a finite number{' or null' if 'None' in field_type else ''}, got {text!r}")
    if field_type == "int":
        if int(value) != value:
            raise ValueError(f"policy {key} must be an integer, got {text!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class StoredPolicy:
    """A policy version of a store; ``id`` is ``None`` for the defaults before any was stored."""

    id: int | None
    created: str | None
    policy: Policy


def current_policy(store: Store) -> StoredPolicy:
    """The policy in force (the defaults while none was set)."""
    with reading(store) as conn:
        stored = latest_policy(conn)
    return StoredPolicy(None, None, Policy()) if stored is None else StoredPolicy(stored[0], stored[1], Policy.from_dict(stored[2]))


def set_policy(store: Store, updates: dict[str, str]) -> StoredPolicy:
    """Store a new policy version: the one in force with ``updates`` (``KEY: VALUE text``) applied."""
    policy = current_policy(store).policy.with_updates(updates)
    with writing(store) as conn:
        insert_policy(conn, policy.to_dict())
    return current_policy(store)


def policy_in_force(conn: sqlite3.Connection) -> tuple[int, Policy]:
    """(id, policy) in force inside a write transaction, storing the defaults as version 1 if needed."""
    stored = latest_policy(conn)
    if stored is None:
        return insert_policy(conn, Policy().to_dict()), Policy()
    return stored[0], Policy.from_dict(stored[2])
