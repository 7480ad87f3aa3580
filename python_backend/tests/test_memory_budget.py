"""The training-memory estimate bounds a real step's memory, and the server refuses jobs above its limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dakr.config import ExperimentConfig, apply_overrides
from dakr.memory_budget import FIXES, estimate_training_memory
from dakr.service import create_app
from dakr.service.security import ServiceConfigError
from dakr.store import Store
from test_service_support import local_client, store_with_base

API = "/api/v1"
CLASSES = 3

#: One optimiser step of the network with the segmentation loss, in a fresh process; prints how
#: far the step raised the process's peak resident memory above what it held just before.
STEP_PROBE = """
import json, resource, sys
import torch
from monai.losses import DiceCELoss
from dakr.config import ExperimentConfig, apply_overrides
from dakr.nets.factory import build_network

def peak_bytes():
    # VmHWM belongs to this program's address space; ru_maxrss would carry the parent's peak over exec.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

torch.set_num_threads(1)
config = apply_overrides(ExperimentConfig(), json.loads(sys.argv[1]))
classes = int(sys.argv[2])
model = build_network(config.net, classes)
optimizer = torch.optim.Adam(model.parameters())
count = config.train.batch_size + config.continual.buffer_batch_size
images = torch.randn(count, 1, *config.net.patch_size)
labels = torch.randint(0, classes, (count, 1, *config.net.patch_size))
with open("/proc/self/statm") as statm:
    before = int(statm.read().split()[1]) * resource.getpagesize()
DiceCELoss(to_onehot_y=True, softmax=True)(model(images), labels).backward()
optimizer.step()
print(peak_bytes() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident memory from /proc")
@pytest.mark.parametrize(
    "overrides",
    [
        {"train.batch_size": 8},
        {"net.spatial_dims": 3, "net.patch_size": [32, 32, 64], "train.batch_size": 1, "continual.buffer_batch_size": 1},
    ],
)
def test_estimate_bounds_a_real_training_step_without_wild_overshoot(overrides: dict) -> None:
    measured = int(subprocess.run(
        [sys.executable, "-c", STEP_PROBE, json.dumps(overrides), str(CLASSES)], capture_output=True, text=True, check=True
    ).stdout)
    estimated = estimate_training_memory(apply_overrides(ExperimentConfig(), overrides), CLASSES).parts["activations"]
    assert measured > 100 * 2**20, "the probe step is too small to measure"
    assert measured <= estimated <= 3 * measured, (measured >> 20, estimated >> 20)


def test_each_part_grows_with_the_settings_named_to_lower_it() -> None:
    def parts(**overrides) -> dict[str, int]:
        return estimate_training_memory(apply_overrides(ExperimentConfig(), overrides), CLASSES).parts

    base = parts()
    samples = ExperimentConfig().train.batch_size + ExperimentConfig().continual.buffer_batch_size
    assert parts(**{"continual.buffer_batch_size": 0})["activations"] < base["activations"]
    assert parts(**{"train.batch_size": 2 * samples})["activations"] > 2 * base["activations"]
    assert parts(**{"continual.hsic_queue": 1024})["kernels"] > 10 * base["kernels"]
    decoder = parts(**{"continual.cna_layer": "decoder", "continual.cna_reduction": "spatial"})["feature cache"]
    filters = ExperimentConfig().net.filters
    assert decoder == pytest.approx(base["feature cache"] * filters[0] / (filters[-1] / 4 ** (len(filters) - 1)))
    with_logits = parts(**{"continual.lambda_buffer_logits": 1.0})["feature cache"]
    assert with_logits == pytest.approx(base["feature cache"] * (1 + CLASSES / (filters[-1] / 4 ** (len(filters) - 1))))
    assert parts(**{"continual.mapping_hidden": 4096})["weights"] > base["weights"]
    assert set(base) == set(FIXES)


def test_the_refusal_names_the_largest_part_and_its_fix() -> None:
    estimate = estimate_training_memory(apply_overrides(ExperimentConfig(), {"continual.hsic_queue": 100_000}), CLASSES)
    message = estimate.explain(2**30)
    assert estimate.largest == "kernels"
    assert "1,024 MB" in message and FIXES["kernels"] in message and "--max-job-memory-mb" in message


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return store_with_base(tmp_path)


def test_server_refuses_a_job_that_would_exhaust_memory(store: Store) -> None:
    with local_client(create_app(store.path)) as client:
        hostile = {"train": {"batch_size": 10_000_000}, "continual": {"hsic_queue": 10_000_000}}
        response = client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A", "config": hostile})
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert "more than this server allows" in detail and "train.batch_size" in detail and "--max-job-memory-mb" in detail
    assert store.jobs() == []


def test_the_limit_comes_from_the_server_option(store: Store) -> None:
    with local_client(create_app(store.path, max_job_memory_mb=1)) as client:
        response = client.post(f"{API}/jobs", json={"kind": "adapt", "site": "A"})
        assert response.status_code == 400 and "(1 MB)" in response.json()["detail"], response.text
    assert store.jobs() == []
    with pytest.raises(ServiceConfigError, match="--max-job-memory-mb must be positive"):
        create_app(store.path, max_job_memory_mb=0)
