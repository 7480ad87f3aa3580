"""The benchmark's Markdown tables, target checks and plots from a results dictionary."""

import struct

from dakr.evaluation.benchmark_report import target_checks, write_benchmark_outputs


def _row(acc, bwt, seconds):
    return {
        "acc": acc, "acc_std": 1.0, "bwt": bwt, "bwt_std": 0.5, "new_site": 70.0, "new_site_std": None,
        "forgetting": -bwt, "forgetting_std": 0.2, "fwt": 3.0, "fwt_std": 0.1,
        "matrix": [[80.0, 20.0], [60.0 + bwt, 70.0]], "seconds_per_step": seconds, "peak_rss_mb": 500.0, "seeds": [0, 1],
    }


RESULTS = {
    "config": {"buffer_budgets": [8, 32]},
    "sites": ["a", "b"],
    "split": "audit",
    "device": "cpu",
    "fwt_reference": "b_j = stage-1 model on site j",
    "strategies": {
        "finetune": _row(50.0, -20.0, 0.05),
        "replay": _row(60.0, -6.0, 0.10),
        "dakr": _row(63.0, -2.0, 0.12),
        "replay@buffer=32": _row(66.0, -1.0, 0.10),
        "dakr@buffer=32": _row(66.5, -1.5, 0.12),
    },
    "paired": {
        "dakr-replay@buffer=8": {"acc": [0.5, 3.0, 5.5], "bwt": [1.0, 4.0, 7.0]},
        "dakr-replay@buffer=32": {"acc": [-1.0, 0.5, 2.0], "bwt": [-2.0, -0.5, 1.0]},
    },
}


def test_target_checks_use_the_paired_intervals():
    checks = {target: (measured, met) for target, measured, met in target_checks(RESULTS)}
    assert checks["replay BWT ≤ −5 at buffer 8 (forgetting is real)"] == ("-6.0", True)
    assert checks["dakr − replay ACC ≥ +2 with the 95 % interval above 0 at buffer 8"] == ("+3.0 [+0.5, +5.5]", True)
    assert checks["dakr BWT ≥ replay BWT at buffer 32"] == ("-1.5 vs -1.0", False)
    assert checks["dakr seconds/step ≤ 1.3 × replay"] == ("1.20×", True)
    straddling = {**RESULTS, "paired": {"dakr-replay@buffer=8": {"acc": [-0.5, 3.0, 6.5], "bwt": [0.0, 1.0, 2.0]}}}
    failed = {target: met for target, _, met in target_checks(straddling)}
    assert failed["dakr − replay ACC ≥ +2 with the 95 % interval above 0 at buffer 8"] is False
    assert target_checks({**RESULTS, "split": "validation"}) == []


def test_outputs_are_written(tmp_path):
    write_benchmark_outputs(RESULTS, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| dakr | 63.0 ± 1.0 | -2.0 ± 0.5 | 70.0 |" in table and "| 1.20 |" in table
    assert "| dakr-replay@buffer=8 | +3.0 [+0.5, +5.5] | +4.0 [+1.0, +7.0] |" in table
    for name in ("accuracy_matrices.png", "final_dice.png"):
        header = (tmp_path / name).read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24])[0] > 100
