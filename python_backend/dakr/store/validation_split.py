"""A site's validation split: training cases held out of training to tune options on.

The validation cases are carved from a site's *training* cases (never its audit cases) with a
recorded seed and kept in their own table, so every run on the store trains on the same
remaining cases and tuning never reads the audit split.
"""

from __future__ import annotations

from dakr.store.records import CaseRecord, StoreError
from dakr.store.schema import DB_NAME, connect, transaction
from dakr.store.sites import frozen_split
from dakr.store.store import Store

_TABLE = """CREATE TABLE IF NOT EXISTS validation_cases (
    site TEXT NOT NULL,
    case_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    fraction REAL NOT NULL,
    PRIMARY KEY (site, case_id)
)"""


def carve_validation(store: Store, site: str, fraction: float, seed: int) -> list[str]:
    """Hold out ``fraction`` of ``site``'s training cases (at least one, keeping one) as validation.

    The choice depends only on the sorted training case ids and ``seed``. Calling it again
    returns the recorded split unchanged; a different ``fraction`` or ``seed`` is refused.
    """
    if not 0.0 < fraction < 1.0:
        raise StoreError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}. Fix: use e.g. 0.2")
    db = store.path / DB_NAME
    with transaction(db) as conn:
        conn.execute(_TABLE)
        recorded = conn.execute("SELECT case_id, seed, fraction FROM validation_cases WHERE site = ? ORDER BY case_id", (site,)).fetchall()
        if recorded:
            if (recorded[0]["seed"], recorded[0]["fraction"]) != (seed, fraction):
                raise StoreError(
                    f"site {site!r} already has a validation split (seed {recorded[0]['seed']}, fraction {recorded[0]['fraction']}). "
                    "Fix: use the recorded seed and fraction, or a new store"
                )
            return [row["case_id"] for row in recorded]
        train = [row["case_id"] for row in conn.execute("SELECT case_id FROM cases WHERE site = ? AND split = 'train'", (site,))]
        if len(train) < 2:
            raise StoreError(f"site {site!r} has {len(train)} training case(s); a validation split needs at least 2. Fix: add cases to the site")
        held_out = sorted(case_id for case_id, part in frozen_split(train, fraction, seed).items() if part == "audit")
        conn.executemany(
            "INSERT INTO validation_cases (site, case_id, seed, fraction) VALUES (?, ?, ?, ?)",
            [(site, case_id, seed, fraction) for case_id in held_out],
        )
    return held_out


def validation_case_ids(store: Store, site: str) -> set[str]:
    """Ids of ``site``'s validation cases (empty when none were carved)."""
    with connect(store.path / DB_NAME) as conn:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'validation_cases'").fetchone()
        if not exists:
            return set()
        return {row["case_id"] for row in conn.execute("SELECT case_id FROM validation_cases WHERE site = ?", (site,))}


def validation_cases(store: Store, site: str) -> list[CaseRecord]:
    """``site``'s validation cases (training cases that training leaves out), sorted by id."""
    held_out = validation_case_ids(store, site)
    return [case for case in store.cases(site, "train") if case.case_id in held_out]
