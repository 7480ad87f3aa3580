"""``dakr site check`` and ``dakr site rank``: know before you adapt (see :mod:`dakr.shift`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_site_check(args: argparse.Namespace) -> int:
    """Print the shift check of a registered site against the active model."""
    from dakr.progress import ConsoleProgress
    from dakr.shift import check_site, format_check
    from dakr.store import Store

    check = check_site(Store.open(args.store), args.name, progress=ConsoleProgress())
    if args.json:
        Path(args.json).write_text(json.dumps(check.to_dict(), indent=2))
    print(format_check(check))
    return 0


def cmd_site_rank(args: argparse.Namespace) -> int:
    """Rank a folder of unlabelled images for labelling and write the order with reasons."""
    from dakr.data.io import SUPPORTED_SUFFIXES
    from dakr.progress import ConsoleProgress
    from dakr.shift import rank_images
    from dakr.store import Store

    folder = Path(args.images).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder. Fix: give the folder holding the site's unlabelled images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.lower().endswith(".seg.nrrd"))
    if not paths:
        raise FileNotFoundError(f"{folder} holds no image ({', '.join(SUPPORTED_SUFFIXES)}). Fix: point --images at the image files")
    ranked = rank_images(Store.open(args.store), paths, weight=args.uncertainty_weight, seed=args.seed, progress=ConsoleProgress())
    out = Path(args.out) if args.out else folder / "labelling_order.json"
    out.write_text(json.dumps([r.to_dict() for r in ranked], indent=2))
    for item in ranked:
        print(f"{item.rank:>3}. {Path(item.path).name}: {item.reason}")
    print(f"labelling order written to {out}")
    return 0


def cmd_learning_curve(args: argparse.Namespace) -> int:
    """Run the learning-curve benchmark (ranked vs random labelling order)."""
    from dakr.shift.learning_curve import LearningCurveConfig, run_learning_curve

    config = LearningCurveConfig.load(args.config)
    if args.seeds:
        config.seeds = args.seeds
    if args.workers:
        config.workers = args.workers
    out = Path(args.out)
    site_dirs = None
    if args.data:
        from dakr.benchmark import user_site_dirs

        site_dirs = user_site_dirs(Path(args.data), args.sites or [])
    run_learning_curve(config, out, site_dirs)
    print((out / "results.md").read_text(), end="")
    print(f"results: {out / 'results.json'}; plot: {out / 'learning_curve.png'}")
    return 0


def add_learning_curve_verb(verbs: argparse._SubParsersAction) -> None:
    """Register ``dakr learning-curve``."""
    sub = verbs.add_parser(
        "learning-curve",
        help="benchmark: new-site Dice and past-site BWT against the number of labelled cases, ranked vs random order",
    )
    sub.set_defaults(handler=cmd_learning_curve)
    sub.add_argument("--config", default="learning_curve", help="learning_curve (shipped) or a JSON config file")
    sub.add_argument("--out", required=True, help="output folder")
    sub.add_argument("--seeds", type=int, help="number of seeds (default: the config's)")
    sub.add_argument("--workers", type=int, help="runs at the same time (default: the config's)")
    sub.add_argument("--data", help="folder of your own sites in nnU-Net raw layout (instead of the demo data)")
    sub.add_argument("--sites", nargs="+", help="with --data: site folder names inside it, in order; the last one is the new site")


def add_shift_verbs(site_verbs: argparse._SubParsersAction) -> None:
    """Register ``site check`` and ``site rank`` under ``dakr site``."""
    check = site_verbs.add_parser(
        "check", help="how far a registered site is from the known ones, and the active model's Dice on it"
    )
    check.set_defaults(handler=cmd_site_check)
    check.add_argument("store")
    check.add_argument("name", help="a registered site")
    check.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    rank = site_verbs.add_parser("rank", help="order a new site's unlabelled images by the value of labelling them")
    rank.set_defaults(handler=cmd_site_rank)
    rank.add_argument("store")
    rank.add_argument("--images", required=True, help="folder of unlabelled images (.nii.gz, .nrrd, .mha, ...)")
    rank.add_argument("--out", help="output JSON (default IMAGES/labelling_order.json)")
    rank.add_argument("--seed", type=int, default=0, help="seed of the tie-breaking (default 0)")
    rank.add_argument("--uncertainty-weight", type=float, default=0.5, help="weight of uncertainty vs novelty, 0-1 (default 0.5)")
