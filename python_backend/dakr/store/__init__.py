"""The embedded DAKR store: sites, cases, frozen splits, model versions, evaluations and jobs.

One folder with SQLite metadata (WAL) and files for volumes, weights and buffers; see
:mod:`dakr.store.store` for the layout and the crash-safety rules.
"""

from dakr.store.records import CaseRecord, EvaluationRecord, JobRecord, SiteInfo, SitePurgedError, StoreError, VersionInfo
from dakr.store.store import Store

__all__ = [
    "CaseRecord",
    "EvaluationRecord",
    "JobRecord",
    "SiteInfo",
    "SitePurgedError",
    "Store",
    "StoreError",
    "VersionInfo",
]
