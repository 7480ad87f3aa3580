"""SQL of the store: queries and the row <-> record conversions, one function per statement.

Functions taking a connection run inside the caller's connection or transaction.
"""

from __future__ import annotations

import sqlite3

from dakr.store.records import EvaluationRecord, JobRecord, SiteInfo, StoreError, VersionInfo, now_iso
from dakr.store.schema import dump_json, load_json

SITE_QUERY = """
SELECT s.name, s.created, s.split_seed, s.audit_fraction, s.purged,
       COUNT(CASE WHEN c.split = 'train' THEN 1 END) AS n_train,
       COUNT(CASE WHEN c.split = 'audit' THEN 1 END) AS n_audit
FROM sites s LEFT JOIN cases c ON c.site = s.name
{where}
GROUP BY s.seq ORDER BY s.seq
"""

VERSION_QUERY = """
SELECT v.*, COALESCE(v.id = a.version, 0) AS active
FROM versions v LEFT JOIN active_version a ON a.slot = 1
{where}
ORDER BY v.id
"""

EVALUATION_QUERY = """
SELECT e.* FROM evaluations e
JOIN sites s ON s.name = e.site
JOIN cases c ON c.site = e.site AND c.case_id = e.case_id
WHERE {where}
ORDER BY e.version, s.seq, e.case_id
"""


def stored_label_names(conn: sqlite3.Connection) -> dict[str, int] | None:
    """The store's label set ``{name: value}``, or ``None`` before the first site."""
    rows = conn.execute("SELECT name, value FROM label_names ORDER BY value").fetchall()
    return {row["name"]: row["value"] for row in rows} or None


def require_new_site(conn: sqlite3.Connection, name: str) -> None:
    """Raise :class:`StoreError` if a site called ``name`` exists, ignoring case (file systems may)."""
    row = conn.execute("SELECT name FROM sites WHERE name = ? COLLATE NOCASE", (name,)).fetchone()
    if row is not None and row["name"] == name:
        raise StoreError(f"site {name!r} is already registered. Fix: choose another site name")
    if row is not None:
        raise StoreError(
            f"site {name!r} differs from the registered site {row['name']!r} only by upper/lower case, and both would "
            "share one folder on macOS and Windows. Fix: choose a name that differs by more than case"
        )


def insert_site(
    conn: sqlite3.Connection,
    name: str,
    label_names: dict[str, int],
    split: dict[str, str],
    audit_fraction: float,
    seed: int,
) -> None:
    """Insert a site, its cases and (for the first site) the label set; caller holds the lock."""
    require_new_site(conn, name)
    stored_labels = stored_label_names(conn)
    if stored_labels is None:
        conn.executemany("INSERT INTO label_names (name, value) VALUES (?, ?)", label_names.items())
    elif stored_labels != label_names:
        raise StoreError(
            f"the store's label set {stored_labels} was fixed by another site while {name!r} was "
            f"being registered with {label_names}. Fix: register {name!r} again"
        )
    conn.execute(
        "INSERT INTO sites (name, created, split_seed, audit_fraction) VALUES (?, ?, ?, ?)",
        (name, now_iso(), seed, audit_fraction),
    )
    conn.executemany(
        "INSERT INTO cases (site, case_id, split) VALUES (?, ?, ?)",
        [(name, case_id, part) for case_id, part in split.items()],
    )


def site_info(row: sqlite3.Row) -> SiteInfo:
    """A :data:`SITE_QUERY` row as a record."""
    return SiteInfo(
        name=row["name"],
        created=row["created"],
        split_seed=row["split_seed"],
        audit_fraction=row["audit_fraction"],
        n_train=row["n_train"],
        n_audit=row["n_audit"],
        purged=bool(row["purged"]),
    )


def check_lineage(conn: sqlite3.Connection, parent: int | None, site: str) -> None:
    """Raise :class:`StoreError` unless the parent version (if any) and the site exist."""
    if parent is not None and not conn.execute("SELECT 1 FROM versions WHERE id = ?", (parent,)).fetchone():
        raise StoreError(f"parent version {parent} does not exist. Fix: pass an existing version id or None")
    if not conn.execute("SELECT 1 FROM sites WHERE name = ?", (site,)).fetchone():
        raise StoreError(f"site {site!r} of the new version is not registered. Fix: register the site first")


def set_active(conn: sqlite3.Connection, version_id: int) -> None:
    """Point the active-version pointer at ``version_id``."""
    conn.execute(
        "INSERT INTO active_version (slot, version) VALUES (1, ?) "
        "ON CONFLICT (slot) DO UPDATE SET version = excluded.version",
        (version_id,),
    )


def version_info(row: sqlite3.Row) -> VersionInfo:
    """A :data:`VERSION_QUERY` row as a record."""
    return VersionInfo(
        id=row["id"],
        parent=row["parent"],
        site=row["site"],
        strategy=row["strategy"],
        config=load_json(row["config"]),
        seed=row["seed"],
        created=row["created"],
        active=bool(row["active"]),
    )


def upsert_evaluation(conn: sqlite3.Connection, record: EvaluationRecord) -> None:
    """Insert or replace one evaluation; :class:`StoreError` if its version or case is unknown."""
    try:
        conn.execute(
            "INSERT INTO evaluations (version, site, case_id, dice, hd95) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (version, site, case_id) DO UPDATE SET dice = excluded.dice, hd95 = excluded.hd95",
            (record.version, record.site, record.case_id, dump_json(record.dice), dump_json(record.hd95)),
        )
    except sqlite3.IntegrityError as error:
        raise StoreError(
            f"evaluation of version {record.version} on {record.site}/{record.case_id} refers to an unknown "
            "version or case; nothing was recorded. Fix: evaluate stored versions on registered cases"
        ) from error


def job_record(row: sqlite3.Row) -> JobRecord:
    """A ``jobs`` row as a record."""
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        state=row["state"],
        params=load_json(row["params"]),
        created=row["created"],
        updated=row["updated"],
        error=row["error"],
        result=load_json(row["result"]),
        pid=row["pid"],
    )


def purged_sites(conn: sqlite3.Connection) -> list[str]:
    """Names of the purged sites."""
    return [row["name"] for row in conn.execute("SELECT name FROM sites WHERE purged = 1")]
