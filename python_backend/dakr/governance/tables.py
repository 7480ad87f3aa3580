"""SQLite tables of change control: policies, gate decisions, provenance and sign-offs.

The tables are created on first use in any store (old stores included). Sign-offs are
append-only: triggers refuse every UPDATE and DELETE, so the history of a version can only grow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dakr.store import Store
from dakr.store.records import now_iso
from dakr.store.schema import DB_NAME, connect, dump_json, load_json, transaction

_TABLES = ("policies", "gate_decisions", "provenance", "signoffs")

_DDL = """
CREATE TABLE IF NOT EXISTS policies (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_decisions (
    version INTEGER PRIMARY KEY REFERENCES versions(id),
    policy INTEGER NOT NULL REFERENCES policies(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('accepted', 'held')),
    activation TEXT NOT NULL,
    detail TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS provenance (
    version INTEGER PRIMARY KEY REFERENCES versions(id),
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signoffs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL REFERENCES versions(id),
    action TEXT NOT NULL CHECK (action IN ('approved', 'rejected')),
    reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
    by TEXT,
    created TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS signoffs_no_update BEFORE UPDATE ON signoffs
BEGIN SELECT RAISE(ABORT, 'sign-offs are append-only'); END;
CREATE TRIGGER IF NOT EXISTS signoffs_no_delete BEFORE DELETE ON signoffs
BEGIN SELECT RAISE(ABORT, 'sign-offs are append-only'); END;
CREATE TRIGGER IF NOT EXISTS gate_decisions_no_update BEFORE UPDATE ON gate_decisions
BEGIN SELECT RAISE(ABORT, 'gate decisions are append-only'); END;
"""


def _ensure(store: Store) -> None:
    db = store.path / DB_NAME
    with connect(db) as conn:
        present = {row["name"] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if present.issuperset(_TABLES):
        return
    with connect(db) as conn:
        conn.executescript(f"BEGIN IMMEDIATE;{_DDL}COMMIT;")


@contextmanager
def reading(store: Store) -> Iterator[sqlite3.Connection]:
    """A read connection to the store with the change-control tables in place."""
    _ensure(store)
    with connect(store.path / DB_NAME) as conn:
        yield conn


@contextmanager
def writing(store: Store) -> Iterator[sqlite3.Connection]:
    """A write transaction on the store with the change-control tables in place."""
    _ensure(store)
    with transaction(store.path / DB_NAME) as conn:
        yield conn


def insert_policy(conn: sqlite3.Connection, policy: dict[str, Any]) -> int:
    """Store a new policy version and return its id (1, 2, ...)."""
    policy_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM policies").fetchone()[0]
    conn.execute("INSERT INTO policies (id, created, policy) VALUES (?, ?, ?)", (policy_id, now_iso(), dump_json(policy)))
    return policy_id


def latest_policy(conn: sqlite3.Connection) -> tuple[int, str, dict[str, Any]] | None:
    """(id, created, policy) of the policy in force, or ``None`` while none was stored."""
    row = conn.execute("SELECT * FROM policies ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (row["id"], row["created"], load_json(row["policy"]))


def policy_by_id(conn: sqlite3.Connection, policy_id: int) -> tuple[int, str, dict[str, Any]]:
    """(id, created, policy) of a stored policy version."""
    row = conn.execute("SELECT * FROM policies WHERE id = ?", (policy_id,)).fetchone()
    return row["id"], row["created"], load_json(row["policy"])
