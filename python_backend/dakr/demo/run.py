"""``dakr demo``: the whole product on the built-in demo sites, end to end, with one command.

Builds (or reuses) the demo data, creates a fresh store, trains the base model on the first
site, adapts site by site with the chosen strategy, evaluates every version on every site and
gates every update with the store's acceptance policy. It then tries a deliberately forgetting
update (plain fine-tuning on the first site only, from the active version), which the gate holds,
prints the per-site Dice after each stage with ACC and BWT, writes the audit report and ends with
every update's gate verdict.
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
from dakr.evaluation.continual_metrics import acc, bwt
from dakr.governance.decisions import gate_result
from dakr.progress import ConsoleProgress
from dakr.store import Store


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
    report = write_report(store, out / "report")
    print(f"\nreport: {report}")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    print_verdicts(store)
    return 0


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
    print(f"{'after':<28}" + "".join(f"{s[:16]:>18}" for s in sites))
    for stage, row in zip(stages, matrix):
        print(f"{stage:<28}" + "".join(f"{'–' if np.isnan(v) else f'{v:.1f}':>18}" for v in row))
    r = matrix[:, [sites.index(site) for site in learned]]
    print(f"ACC {acc(r):.1f}   BWT {bwt(r):+.1f} over {', '.join(learned)} (negative = forgetting)")
