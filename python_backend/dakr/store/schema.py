"""SQLite metadata of a store: schema, versioning and connections.

Every operation opens its own connection, so a server process, worker subprocesses and
threads can share one store. The database runs in WAL mode (readers never block the writer)
and waits up to :data:`BUSY_TIMEOUT_MS` for a lock instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dakr.store.records import StoreError

#: File name of the metadata database inside a store folder.
DB_NAME = "dakr.sqlite3"
#: Schema version written by this code; a migration bumps it.
SCHEMA_VERSION = 1
#: How long an operation waits for another writer before giving up.
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS label_names (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sites (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    split_seed INTEGER NOT NULL,
    audit_fraction REAL NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cases (
    site TEXT NOT NULL REFERENCES sites(name),
    case_id TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'audit')),
    PRIMARY KEY (site, case_id)
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES versions(id),
    site TEXT NOT NULL REFERENCES sites(name),
    strategy TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS active_version (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    version INTEGER NOT NULL REFERENCES versions(id)
);
CREATE TABLE IF NOT EXISTS evaluations (
    version INTEGER NOT NULL REFERENCES versions(id),
    site TEXT NOT NULL,
    case_id TEXT NOT NULL,
    dice TEXT NOT NULL,
    hd95 TEXT NOT NULL,
    PRIMARY KEY (version, site, case_id),
    FOREIGN KEY (site, case_id) REFERENCES cases(site, case_id)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    error TEXT,
    result TEXT,
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS store_identity (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    id TEXT NOT NULL
);
INSERT OR IGNORE INTO store_identity (slot, id) VALUES (1, lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS version_runs (
    version INTEGER PRIMARY KEY REFERENCES versions(id),
    run_id TEXT NOT NULL UNIQUE,
    job_id TEXT,
    activation TEXT CHECK (activation IN ('activated', 'kept_inactive')),
    active_at_decision INTEGER
);
"""


@contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh autocommit connection with foreign keys on and the busy timeout set."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction holding the store's write lock; rolled back on any exception."""
    with connect(db_path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def create_schema(db_path: Path) -> None:
    """Create the tables (idempotent) in WAL mode and record the schema version once."""
    with connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    with transaction(db_path) as conn:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


def check_schema(db_path: Path) -> None:
    """Raise :class:`StoreError` unless the database is a store of a schema this code reads."""
    try:
        with connect(db_path) as conn:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"{db_path} is not a readable DAKR store database ({error}). "
            "Fix: restore it from a backup or create a new store with `dakr init <path>`"
        ) from error
    version = row["version"] if row else None
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{db_path} has store schema version {version}, this dakr reads version "
            f"{SCHEMA_VERSION}. Fix: use the dakr release that created this store"
        )


def dump_json(value: Any) -> str:
    """JSON text for a TEXT column; NaN and infinities are kept (as NaN/Infinity literals)."""
    return json.dumps(value, allow_nan=True)


def load_json(text: str | None) -> Any:
    """Inverse of :func:`dump_json`; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)
