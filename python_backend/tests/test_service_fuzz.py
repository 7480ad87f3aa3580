"""Property-based fuzzing of every route from the OpenAPI schema (schemathesis), against a real
server on loopback: no 5xx, and every response matches the schema (status, content type, body).

Bounded: a fixed number of derandomised examples per route. Job workers are stood in for by a
process that exits at once, so fuzzed jobs never train.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

import dakr.service.jobs as jobs_module
from dakr.data.site import discover_site
from dakr.service import create_app
from dakr.store import Store
from test_service_support import add_tiny_version, record_dice, wait_for, write_site

#: Examples per route: enough to find the overflow, seed and schema failures, small enough for CI.
EXAMPLES_PER_ROUTE = 25
#: Schema-valid requests may still be refused for what a schema cannot say: a name breaking the
#: naming rules or unknown (400, 404), a state conflict (409), a purged site (410), content that
#: is not a volume (415). Never a 422 (the schema let a malformed request through) nor a 5xx.
CHECKS = """
[checks.positive_data_acceptance]
expected-statuses = ["2XX", "400", "404", "409", "410", "415"]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store with site A, versions 1 and 2 and their Dice, served by uvicorn on a loopback port."""
    root = tmp_path_factory.mktemp("fuzz")
    store = Store.init(root / "store")
    store.add_site("A", discover_site(write_site(root / "A")), audit_fraction=0.25)
    add_tiny_version(store, "A", None)
    add_tiny_version(store, "A", 1)
    record_dice(store, 1, "A", 0.8, 0.6)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs_module, "worker_command", lambda path, job_id, threads: [sys.executable, "-c", "pass", job_id])
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(store.path), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, 60, "the fuzzed server to start")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)


@pytest.fixture(scope="module")
def api_schema(live_server: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json", config=schemathesis.Config.from_str(CHECKS))


def _operations(schema: schemathesis.schemas.BaseSchema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_route_conforms_to_its_schema(api_schema: schemathesis.schemas.BaseSchema, mode: GenerationMode) -> None:
    """Valid requests (``valid``) and requests that break the schema (``invalid``) on every route."""
    failures: dict[str, str] = {}
    operations = _operations(api_schema)
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=60)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request can be generated"
        except (Exception, BaseExceptionGroup) as exc:  # one report for every failing route
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())
