"""Distributed data-parallel training: a 2-process gloo run on the CPU through torchrun."""

import subprocess
import sys

import pytest

from dakr.store import Store

from synthetic import TINY_OVERRIDES, write_config


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(tmp_path, synthetic_sites):
    overrides = {**TINY_OVERRIDES, "train.steps_per_epoch": 12, "train.checkpoint_every": 4}
    config = write_config(tmp_path / "tiny.json", overrides)
    dice = {}
    for nproc in (1, 2):
        store_path = tmp_path / f"store{nproc}"
        store = Store.init(store_path)
        from dakr.data.site import discover_site

        store.add_site("siteA", discover_site(synthetic_sites["siteA"]))
        result = subprocess.run(
            [sys.executable, "-m", "dakr", "adapt", str(store_path), "--site", "siteA", "--strategy", "finetune",
             "--config", str(config), "--nproc", str(nproc), "--work-dir", str(tmp_path / f"work{nproc}")],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, _failure_report(result.stderr)
        versions = store.versions()
        assert len(versions) == 1, "only rank 0 writes a version"
        dice[nproc] = store.site_dice(versions[0].id, "siteA")
    assert dice[2] is not None and abs(dice[2] - dice[1]) < 0.25


def _failure_report(stderr: str) -> str:
    """The lines that say why a rank died (they scroll away above torchrun's summary), then the tail."""
    causes = [line for line in stderr.splitlines() if any(word in line for word in ("terminate", "what()", "Error", "error:"))]
    return "\n".join(causes[:40]) + "\n...\n" + stderr[-1500:]
