"""Shared fixtures: tiny synthetic sites and stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dakr.data.site import discover_site
from dakr.service import create_app
from dakr.store import Store

from synthetic import SITE_CONTRASTS, write_site
from test_service_support import local_client


@pytest.fixture(scope="session")
def synthetic_sites(tmp_path_factory) -> dict[str, Path]:
    """Three site folders (nnU-Net layout), written once per test session."""
    root = tmp_path_factory.mktemp("sites")
    return {name: write_site(root, name, contrast, seed=i) for i, (name, contrast) in enumerate(SITE_CONTRASTS.items())}


@pytest.fixture
def registered_store(tmp_path, synthetic_sites) -> Store:
    """A store with the three synthetic sites registered (no model yet)."""
    store = Store.init(tmp_path / "store")
    for name, folder in synthetic_sites.items():
        store.add_site(name, discover_site(folder), audit_fraction=0.25)
    return store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    """An API client of a default app on the requesting module's ``store`` fixture, addressing it as ``127.0.0.1``."""
    with local_client(create_app(store.path)) as test_client:
        yield test_client
