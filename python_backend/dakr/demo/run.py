"""``dakr demo``: the whole product on the built-in demo sites, end to end, with one command.

Builds (or reuses) the demo data, creates a fresh store, trains the base model on the first
site, then for each further site prints its shift check (before any training on it) and adapts
with the chosen strategy; every version is evaluated on every site and every update is gated by
the store's acceptance policy. It then tries a deliberately forgetting update (plain fine-tuning
on the first site only, from the active version), which the gate holds, prints the per-site Dice
after each stage with ACC and BWT, the out-of-distribution verdict of the final model on a known
site's case and on a protocol no site uses, writes the audit report and ends with every update's
gate verdict.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np

from dakr.config import flatten
from dakr.data.site import discover_site
from dakr.demo.contrasts import SiteProtocol
from dakr.evaluation.continual_metrics import acc, bwt
from dakr.governance.decisions import gate_result
from dakr.progress import ConsoleProgress
from dakr.store import Store


#: A protocol no demo site uses (short-TI inversion recovery, thick slices, strong bias and noise).
HELD_OUT_PROTOCOL = SiteProtocol(
    "heldout_stir_1p5T", "STIR", "1.5T", "inversion_recovery", tr_ms=3000.0, te_ms=30.0, ti_ms=150.0,
    slice_thickness_mm=8.0, slice_axis="z", bias_strength=0.35, noise_fraction=0.08, gamma=0.6, gain=800.0,
)


def demo_overrides(quick: bool) -> dict[str, object]:
    """The demo's training settings (``dakr/configs/demo.json``); ``quick`` shortens training."""
    overrides = flatten(json.loads((resources.files("dakr") / "configs" / "demo.json").read_text()))
    if quick:
        overrides.update({"train.epochs": 1, "train.steps_per_epoch": 20})
    return overrides


def run_demo(out: Path, strategy: str = "dakr", quick: bool = False) -> int:
    """Run the demo into ``out`` (data, store, report); returns the process exit code."""
    from dakr.demo import build_demo_data
    from dakr.evaluation.report import write_report
    from dakr.pipeline import adapt, lineage
    from dakr.shift import check_site, format_check

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the demo sites in {out / 'data'} (cached after the first run)")
    site_dirs = build_demo_data(out / "data")
    store_dir = out / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = Store.init(store_dir)
    for site_dir in site_dirs:
        info = store.add_site(site_dir.name, discover_site(site_dir))
        print(f"registered {info.name}: {info.n_train} training, {info.n_audit} audit cases")
    overrides = demo_overrides(quick)
    progress = ConsoleProgress()
    for index, site_dir in enumerate(site_dirs):
        print(f"\nstage {index + 1}/{len(site_dirs)}: {'base model on' if index == 0 else strategy + ' adapting to'} {site_dir.name}")
        if index > 0:
            print(format_check(check_site(store, site_dir.name, progress=progress)))
        version = adapt(store, site_dir.name, strategy=strategy, overrides=overrides, progress=progress)
        print(gate_result(store, version.id).summary())
    first = site_dirs[0].name
    print(f"\nforgetting check: plain fine-tuning of the active version on {first} alone")
    # Half as long as a stage: enough to forget, and it keeps the demo short.
    short = {**overrides, "train.epochs": max(1, int(overrides["train.epochs"]) // 2)}
    forgetting = adapt(store, first, strategy="finetune", overrides=short, progress=progress)
    print(gate_result(store, forgetting.id).summary())
    sites = [d.name for d in site_dirs]
    chain = lineage(store, store.active_version())
    matrix = np.array([[_value(store.site_dice(v.id, s)) for s in sites] for v in chain]) * 100
    print_summary(sites, [f"v{v.id} ({v.site})" for v in chain], matrix, [v.site for v in chain])
    print_shift_warnings(store, out / "heldout", sites[0])
    report = write_report(store, out / "report")
    print(f"\nreport: {report}")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    print_verdicts(store)
    return 0


def print_shift_warnings(store: Store, heldout_dir: Path, known_site: str) -> None:
    """The final model's out-of-distribution verdict on a known site's audit case and a held-out protocol."""
    from dakr.data.io import read_image
    from dakr.demo import build_demo_data
    from dakr.shift import predict_with_shift

    heldout = build_demo_data(heldout_dir, sites=[HELD_OUT_PROTOCOL], cases_per_site=2, seed=99)[0]
    known_case = store.cases(known_site, "audit")[0]
    print("\nout-of-distribution check of the final model")
    for label, path in (
        (f"{known_site}/{known_case.case_id} (audit case of a known site)", known_case.image_path),
        (f"{heldout.name} (a protocol no site uses)", sorted((heldout / "imagesTr").iterdir())[0]),
    ):
        print(f"  {label}: {predict_with_shift(store, read_image(path)).summary}")


def _value(dice: float | None) -> float:
    return float("nan") if dice is None else dice


def print_verdicts(store: Store) -> None:
    """Every update's gate verdict, oldest first (the demo's last lines)."""
    print("\ngate verdicts (policy: `dakr policy STORE`; details: `dakr record STORE VERSION`)")
    for version in store.versions():
        result = gate_result(store, version.id)
        print(f"v{version.id} {version.strategy} on {version.site}: {result.summary() if result else 'not gated'}")


def print_summary(sites: list[str], stages: list[str], matrix: np.ndarray, learned: list[str]) -> None:
    """Per-site Dice (points) after each stage, then ACC and BWT of the final model over the ``learned`` sites.

    ``learned`` are the sites of the stages in order (held updates are not stages of the active
    lineage, so their sites may be missing); R is the stage x learned-site part of ``matrix``.
    """
    print("\nDice (%) on each site's audit cases after each stage")
    width = max(len(s) for s in sites) + 2
    print(f"{'after':<28}" + "".join(f"{s:>{width}}" for s in sites))
    for stage, row in zip(stages, matrix):
        print(f"{stage:<28}" + "".join(f"{'–' if np.isnan(v) else f'{v:.1f}':>{width}}" for v in row))
    r = matrix[:, [sites.index(site) for site in learned]]
    print(f"ACC {acc(r):.1f}   BWT {bwt(r):+.1f} over {', '.join(learned)} (negative = forgetting)")
