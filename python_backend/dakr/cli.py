"""``dakr``: the command line. The same verbs the HTTP service and the Slicer module use.

Every verb has ``--help``; an error exits non-zero with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from dakr import __version__
from dakr.governance.verbs import add_activate_option, add_verbs as add_governance_verbs


class UsageError(Exception):
    """A user error reported as one line with a non-zero exit code."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from dakr.config import ExperimentConfig, flatten, parse_override

    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides.update(flatten(ExperimentConfig.load(args.config).to_dict()))
    for text in getattr(args, "set", None) or []:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _store(path: str):
    from dakr.store import Store

    return Store.open(path)


def cmd_init(args: argparse.Namespace) -> int:
    from dakr.store import Store

    store = Store.init(args.store)
    print(f"initialised store {store.path}")
    return 0


def cmd_site_add(args: argparse.Namespace) -> int:
    from dakr.data.site import discover_site
    from dakr.progress import ConsoleProgress

    store = _store(args.store)
    info = store.add_site(
        args.name, discover_site(args.path), audit_fraction=args.audit_fraction, seed=args.seed, progress=ConsoleProgress()
    )
    print(f"registered site {info.name}: {info.n_train} training and {info.n_audit} audit cases (split seed {info.split_seed})")
    from dakr.governance.commands import print_audit_advice

    print_audit_advice(store, info.n_train + info.n_audit)
    return 0


def cmd_site_list(args: argparse.Namespace) -> int:
    sites = _store(args.store).sites()
    if not sites:
        print("no sites yet; add one with `dakr site add STORE NAME PATH`")
        return 0
    print(f"{'site':<28}{'train':>7}{'audit':>7}  status")
    for site in sites:
        print(f"{site.name:<28}{site.n_train:>7}{site.n_audit:>7}  {'purged' if site.purged else 'stored'}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        from dakr.distributed import launch

        return launch(args)
    from dakr.distributed import init_from_environment, shutdown
    from dakr.pipeline import adapt
    from dakr.progress import ConsoleProgress

    store = _store(args.store)
    try:
        version = adapt(
            store,
            args.site,
            strategy=args.strategy,
            overrides=_overrides(args),
            progress=ConsoleProgress(),
            work_dir=args.work_dir,
            resume=args.resume,
            device=init_from_environment(),
            activate=args.activate,
        )
    finally:
        shutdown()
    if version is not None:
        from dakr.governance.commands import print_gate

        state = "is now active" if version.active else "is stored but not active"
        print(f"version {version.id} ({version.strategy} on {version.site}, parent {version.parent}) {state}")
        _print_matrix(store)
        print_gate(store, version.id)
    return 0


def _print_matrix(store) -> None:
    versions, sites, matrix = store.dice_matrix()
    if not versions:
        print("no evaluations yet")
        return
    print("mean foreground Dice on audit cases (rows: versions, columns: sites)")
    print(f"{'version':<10}" + "".join(f"{s[:14]:>16}" for s in sites))
    for version, row in zip(versions, matrix):
        print(f"{version:<10}" + "".join(f"{'-' if v is None else f'{v:.3f}':>16}" for v in row))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dakr.pipeline import evaluate_version
    from dakr.progress import ConsoleProgress

    store = _store(args.store)
    targets = [args.version] if args.version is not None else [v.id for v in store.versions()]
    if not targets:
        raise UsageError(f"store {args.store} has no model versions yet; run `dakr adapt` first")
    for version in targets:
        evaluate_version(store, version, progress=ConsoleProgress(), only_missing=not args.force)
    _print_matrix(store)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dakr.governance.decisions import statuses

    store = _store(args.store)
    versions = store.versions()
    if not versions:
        print("no model versions yet")
        return 0
    status = statuses(store)
    print(f"{'':2}{'version':<9}{'parent':<8}{'site':<24}{'strategy':<12}{'status':<20}created")
    for v in versions:
        print(
            f"{'*' if v.active else '':2}{v.id:<9}{'-' if v.parent is None else v.parent:<8}{v.site:<24}"
            f"{v.strategy:<12}{status[v.id] + (' active' if v.active else ''):<20}{v.created}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from dakr.governance.decisions import activate_checked

    version = activate_checked(_store(args.store), args.version)
    print(f"version {version.id} ({version.strategy} on {version.site}) is now active")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dakr.data.io import read_image, write_image
    from dakr.pipeline import predict_image

    store = _store(args.store)
    write_image(predict_image(store, read_image(args.image), args.version), args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dakr.demo.run import run_demo

    return run_demo(out=Path(args.out), strategy=args.strategy, quick=args.quick)


def cmd_report(args: argparse.Namespace) -> int:
    from dakr.evaluation.report import write_report

    path = write_report(_store(args.store), Path(args.out) if args.out else Path(args.store) / "report")
    print(f"report: {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from dakr.benchmark import run_benchmark

    run_benchmark(args.config, Path(args.out), strategies=args.strategies, seeds=args.seeds, workers=args.workers)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dakr.service import serve_main

    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    return serve_main(args.store, host=args.host, port=args.port, token=token, max_upload_mb=args.max_upload_mb)


def cmd_worker(args: argparse.Namespace) -> int:
    from dakr.service import worker_main

    return worker_main(args.store, args.job_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dakr", description="Continual multi-site segmentation with DAKR.")
    parser.add_argument("--version", action="version", version=f"dakr {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, **kw: Any) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text, **kw)
        sub.set_defaults(handler=handler)
        return sub

    sub = verb("init", cmd_init, "create an empty store folder")
    sub.add_argument("store")

    site = verbs.add_parser("site", help="register and list sites", description="register and list sites")
    site_verbs = site.add_subparsers(dest="site_verb", required=True, metavar="ACTION")
    add = site_verbs.add_parser("add", help="validate and register a site (nnU-Net raw layout folder)")
    add.set_defaults(handler=cmd_site_add)
    add.add_argument("store")
    add.add_argument("name", help="site name (letters, digits, . _ -)")
    add.add_argument("path", help="folder with imagesTr/ and labelsTr/ (and optional dataset.json)")
    add.add_argument("--audit-fraction", type=float, default=0.2, help="share of cases frozen as audit split (default 0.2)")
    add.add_argument("--seed", type=int, default=0, help="seed of the train/audit split")
    listing = site_verbs.add_parser("list", help="list registered sites")
    listing.set_defaults(handler=cmd_site_list)
    listing.add_argument("store")

    from dakr.continual.strategies import STRATEGIES

    sub = verb("adapt", cmd_adapt, "train a new model version on a site (the first site trains the base model)")
    sub.add_argument("store")
    sub.add_argument("--site", required=True)
    sub.add_argument("--strategy", default="dakr", choices=list(STRATEGIES), help="continual-learning strategy (default dakr)")
    sub.add_argument("--config", help="JSON config file (partial files are merged over the defaults)")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.epochs=2 (repeatable)")
    sub.add_argument("--work-dir", help="checkpoint folder (enables --resume)")
    sub.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    sub.add_argument("--nproc", type=int, default=1, help="processes for distributed data-parallel training (torchrun)")
    add_activate_option(sub)

    sub = verb("evaluate", cmd_evaluate, "evaluate versions on every site's audit cases and print the Dice table")
    sub.add_argument("store")
    sub.add_argument("--version", type=int, help="only this version (default: all)")
    sub.add_argument("--force", action="store_true", help="re-evaluate cases already evaluated")

    add_governance_verbs(verb)

    sub = verb("models", cmd_models, "list model versions with their lineage and gate status (* = active)")
    sub.add_argument("store")

    sub = verb("rollback", cmd_rollback, "make an earlier version the active one (held or rejected ones need approval)")
    sub.add_argument("store")
    sub.add_argument("version", type=int)

    sub = verb("predict", cmd_predict, "segment a volume; the label map keeps the image's geometry")
    sub.add_argument("store")
    sub.add_argument("image")
    sub.add_argument("out", help="output label map (.nii.gz, .nrrd or .mha)")
    sub.add_argument("--version", type=int, help="model version (default: the active one)")

    sub = verb("demo", cmd_demo, "build the demo sites, adapt site by site and write the audit report")
    sub.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    sub.add_argument("--strategy", default="dakr", choices=list(STRATEGIES))
    sub.add_argument("--quick", action="store_true", help="shorter training (a smoke run)")

    sub = verb("report", cmd_report, "write the HTML audit report of a store")
    sub.add_argument("store")
    sub.add_argument("--out", help="output folder (default STORE/report)")

    sub = verb("benchmark", cmd_benchmark, "compare strategies on the demo site sequence (writes results.json)")
    sub.add_argument("--config", default="quick", help="quick, full, or a JSON benchmark config file")
    sub.add_argument("--out", required=True)
    sub.add_argument("--strategies", nargs="+", help="strategies to run (default: the config's)")
    sub.add_argument("--seeds", type=int, help="number of seeds (default: the config's)")
    sub.add_argument("--workers", type=int, help="runs at the same time (default: the config's; 1 for timings on a CPU)")

    sub = verb("serve", cmd_serve, "run the HTTP API for the Slicer module")
    sub.add_argument("store")
    sub.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback requires a token)")
    sub.add_argument("--port", type=int, default=8000)
    token = sub.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token clients must send")
    token.add_argument("--token-file", help="file holding the bearer token")
    sub.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest accepted upload (default 2048 MB)")

    sub = verbs.add_parser("worker", help=argparse.SUPPRESS)
    sub.set_defaults(handler=cmd_worker)
    sub.add_argument("store")
    sub.add_argument("job_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dakr`` console script."""
    args = build_parser().parse_args(argv)
    from dakr.config import ConfigError
    from dakr.data.errors import DataError, SiteValidationError
    from dakr.store import StoreError
    from dakr.training.trainer import TrainingCancelled

    try:
        return args.handler(args)
    except SiteValidationError as exc:
        print(f"dakr: error: site rejected, nothing was stored:\n{exc}", file=sys.stderr)
    except (UsageError, ConfigError, DataError, StoreError, TrainingCancelled, ValueError, FileNotFoundError) as exc:
        print(f"dakr: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("dakr: interrupted", file=sys.stderr)
        return 130
    return 1
