"""The benchmark's Markdown table, target checks and plots from a results dictionary."""

import struct

from dakr.evaluation.benchmark_report import target_checks, write_benchmark_outputs


def _row(acc, bwt, seconds):
    return {
        "acc": acc, "acc_std": 1.0, "bwt": bwt, "bwt_std": 0.5, "forgetting": -bwt, "fwt": 3.0,
        "matrix": [[80.0, 20.0], [60.0 + bwt, 70.0]], "seconds_per_step": seconds, "peak_rss_mb": 500.0, "seeds": [0, 1],
    }


RESULTS = {
    "sites": ["a", "b"],
    "device": "cpu",
    "fwt_reference": "b_j = stage-1 model on site j",
    "strategies": {
        "finetune": _row(50.0, -20.0, 0.05),
        "replay": _row(60.0, -4.0, 0.10),
        "joint": _row(63.0, 1.0, 0.05),
        "dakr": _row(61.5, -2.0, 0.12),
    },
}


def test_target_checks():
    checks = {target: (measured, met) for target, measured, met in target_checks(RESULTS)}
    assert checks["finetune BWT ≤ −5 (forgetting is real)"] == ("-20.0", True)
    assert checks["dakr beats replay on ACC and BWT"][1] is True
    assert checks["dakr ACC within 2 points of joint"] == ("61.5 vs 63.0", True)
    assert checks["dakr seconds/step ≤ 1.3 × replay"] == ("1.20×", True)
    slower = {**RESULTS, "strategies": {**RESULTS["strategies"], "dakr": _row(59.0, -2.0, 0.2)}}
    failed = {target: met for target, _, met in target_checks(slower)}
    assert not failed["dakr beats replay on ACC and BWT"] and not failed["dakr seconds/step ≤ 1.3 × replay"]
    assert not failed["dakr ACC within 2 points of joint"]


def test_outputs_are_written(tmp_path):
    write_benchmark_outputs(RESULTS, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| dakr | 61.5 ± 1.0 | -2.0 ± 0.5 |" in table and "| 1.20 |" in table
    for name in ("accuracy_matrices.png", "final_dice.png"):
        header = (tmp_path / name).read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24])[0] > 100
