"""``dakr``: the command line. The same verbs the HTTP service and the Slicer module use.

Every verb has ``--help``; an error exits non-zero with one clear line on stderr. Building the
parser imports nothing heavy: torch, MONAI and SimpleITK are imported inside the handlers of
the verbs that need them, so ``--help``, ``init``, ``site list``, ``models`` and ``rollback``
answer at once. Each verb group registers itself in one small ``add_*_verbs`` function.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from dakr import __version__
from dakr.cli_shift import add_learning_curve_verb, add_shift_verbs
from dakr.continual.strategy_names import STRATEGY_NAMES
from dakr.governance.verbs import add_activate_option, add_verbs as add_governance_verbs
from dakr.shipped_configs import benchmark_config_names
from dakr.stage_config import CONFIG_RULE

Handler = Callable[[argparse.Namespace], int]
Verbs = argparse._SubParsersAction


class UsageError(Exception):
    """A user error reported as one line with a non-zero exit code."""


# -- helpers shared by handlers ------------------------------------------------------------------
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


def _print_matrix(store, version: int | None = None) -> None:
    from dakr.display import dice_table

    versions, sites, matrix = store.dice_matrix()
    if version is not None:
        keep = [i for i, v in enumerate(versions) if v == version]
        versions, matrix = [versions[i] for i in keep], [matrix[i] for i in keep]
    if not versions:
        print("no evaluations yet")
        return
    print("mean foreground Dice (points, 0-100) on audit cases (rows: sites, columns: versions)")
    print(dice_table(versions, sites, matrix))


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of this process (default: OMP_NUM_THREADS if set, else the cores this process may use)",
    )


def _verb(verbs: Verbs, name: str, handler: Handler, help_text: str, **kw: Any) -> argparse.ArgumentParser:
    sub = verbs.add_parser(name, help=help_text, description=help_text, **kw)
    sub.set_defaults(handler=handler)
    return sub


# -- init ----------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from dakr.store import Store

    store = Store.init(args.store)
    print(f"initialised store {store.path}")
    return 0


def add_store_verbs(verbs: Verbs) -> None:
    """``init``."""
    sub = _verb(verbs, "init", cmd_init, "create an empty store folder")
    sub.add_argument("store")


# -- site ----------------------------------------------------------------------------------------
def cmd_site_add(args: argparse.Namespace) -> int:
    from dakr.data.site import discover_site
    from dakr.progress import ConsoleProgress

    store = _store(args.store)
    info = store.add_site(
        args.name, discover_site(args.path, trusted=True), audit_fraction=args.audit_fraction, seed=args.seed, progress=ConsoleProgress()
    )
    print(f"registered site {info.name}: {info.n_train} training and {info.n_audit} audit cases (split seed {info.split_seed})")
    if args.check and store.active_version() is not None:
        from dakr.shift import check_site, format_check

        print(format_check(check_site(store, info.name, progress=ConsoleProgress())))
    from dakr.governance.commands import print_audit_advice

    print_audit_advice(store, info.n_train + info.n_audit)
    return 0


def cmd_site_list(args: argparse.Namespace) -> int:
    sites = _store(args.store).sites()
    if not sites:
        print("no sites yet; add one with `dakr site add STORE NAME PATH`")
        return 0
    width = max(len("site"), *(len(site.name) for site in sites)) + 2
    print(f"{'site':<{width}}{'train':>7}{'audit':>7}  status")
    for site in sites:
        print(f"{site.name:<{width}}{site.n_train:>7}{site.n_audit:>7}  {'purged' if site.purged else 'stored'}")
    return 0


def add_site_verbs(verbs: Verbs) -> None:
    """``site add``, ``site list``, ``site check`` and ``site rank``."""
    site = verbs.add_parser("site", help="register and list sites", description="register and list sites")
    actions = site.add_subparsers(dest="site_verb", required=True, metavar="ACTION")
    add = _verb(actions, "add", cmd_site_add, "validate and register a site (nnU-Net raw layout folder)")
    add.add_argument("store")
    add.add_argument("name", help="site name (letters, digits, . _ -)")
    add.add_argument("path", help="folder with imagesTr/ and labelsTr/ (and optional dataset.json)")
    add.add_argument("--audit-fraction", type=float, default=0.2, help="share of cases frozen as audit split (default 0.2)")
    add.add_argument("--seed", type=int, default=0, help="seed of the train/audit split")
    add.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the shift check against the active model after registering"
    )
    listing = _verb(actions, "list", cmd_site_list, "list registered sites")
    listing.add_argument("store")
    add_shift_verbs(actions)


# -- training and evaluation ---------------------------------------------------------------------
def _command_line() -> str:
    """This command as typed, to name the holder of the store's writer lock."""
    return " ".join(["dakr", *sys.argv[1:]])


def cmd_adapt(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _adapt(args)  # one rank of `--nproc N`: the launching process holds the writer lock
    with _store(args.store).writer_lock(_command_line()):
        if args.nproc > 1:
            from dakr.distributed import launch

            return launch(args)
        return _adapt(args)


def _adapt(args: argparse.Namespace) -> int:
    from dakr.distributed import init_from_environment, shutdown
    from dakr.pipeline import adapt
    from dakr.progress import ConsoleProgress
    from dakr.threads import use_torch_threads
    from dakr.training.trainer import TrainingCancelled

    use_torch_threads(args.threads)
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
    except TrainingCancelled as exc:
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_resume_hint(args)) from None
    finally:
        shutdown()
    if version is not None:
        from dakr.governance.commands import print_gate
        from dakr.governance.decisions import activation_outcome

        print(activation_outcome(store, version))
        _print_matrix(store)
        print_gate(store, version.id)
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    if args.work_dir:
        return f"run the same command with --resume to continue from the checkpoint in {args.work_dir}"
    return "nothing was registered; pass --work-dir DIR next time to be able to continue with --resume"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dakr.pipeline import evaluate_version
    from dakr.progress import ConsoleProgress
    from dakr.threads import use_torch_threads

    store = _store(args.store)
    targets = [args.version] if args.version is not None else [v.id for v in store.versions()]
    if not targets:
        raise UsageError(f"store {args.store} has no model versions yet; run `dakr adapt` first")
    use_torch_threads(args.threads)
    with store.writer_lock(_command_line()):
        for version in targets:
            evaluate_version(store, version, progress=ConsoleProgress(), only_missing=not args.force)
    _print_matrix(store, args.version)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dakr.demo.run import run_demo
    from dakr.threads import use_torch_threads

    use_torch_threads(args.threads)
    return run_demo(out=Path(args.out), strategy=args.strategy, quick=args.quick)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from dakr.benchmark import run_benchmark

    run_benchmark(
        args.config, Path(args.out), strategies=args.strategies, seeds=args.seeds, workers=args.workers,
        split=args.split, data_dir=args.data, sites=args.sites, demo_data=args.demo_data, resume=args.resume,
    )
    return 0


def add_training_verbs(verbs: Verbs) -> None:
    """``adapt``, ``evaluate``, ``demo`` and ``benchmark``."""
    sub = _verb(
        verbs,
        "adapt",
        cmd_adapt,
        "train a new model version on a site (the first site trains the base model)",
        epilog=CONFIG_RULE,
    )
    sub.add_argument("store")
    sub.add_argument("--site", required=True)
    sub.add_argument("--strategy", default="dakr", choices=STRATEGY_NAMES, help="continual-learning strategy (default dakr)")
    sub.add_argument("--config", help="JSON config file, nested or dotted keys (merged over the defaults; see the rule below)")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.epochs=2 (repeatable)")
    sub.add_argument("--work-dir", help="checkpoint folder; its checkpoint records the job it belongs to (enables --resume)")
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue the job whose checkpoint is in --work-dir, from the parent version it recorded",
    )
    sub.add_argument("--nproc", type=int, default=1, help="processes for distributed data-parallel training (torchrun)")
    add_activate_option(sub)
    _add_threads_option(sub)

    sub = _verb(verbs, "evaluate", cmd_evaluate, "evaluate versions on every site's audit cases and print the Dice table (points)")
    sub.add_argument("store")
    sub.add_argument("--version", type=int, help="only this version (default: all)")
    sub.add_argument("--force", action="store_true", help="re-evaluate cases already evaluated")
    _add_threads_option(sub)

    sub = _verb(verbs, "demo", cmd_demo, "build the demo sites, adapt site by site and write the audit report")
    sub.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    sub.add_argument("--strategy", default="dakr", choices=STRATEGY_NAMES)
    sub.add_argument("--quick", action="store_true", help="shorter training (a smoke run)")
    _add_threads_option(sub)

    shipped = ", ".join(benchmark_config_names())
    sub = _verb(verbs, "benchmark", cmd_benchmark, "compare strategies on the demo or your own site sequence (writes results.json)")
    sub.add_argument("--config", default="quick", help=f"a shipped config ({shipped}) or a JSON benchmark config file")
    sub.add_argument("--out", required=True)
    sub.add_argument("--strategies", nargs="+", help="strategies to run (default: the config's)")
    sub.add_argument("--seeds", type=int, help="number of seeds (default: the config's)")
    sub.add_argument("--workers", type=int, help="runs at the same time, one torch thread each (default: the config's)")
    sub.add_argument("--split", choices=("audit", "validation"), help="score on audit (final numbers) or validation (tuning) cases")
    sub.add_argument("--data", help="folder of your own sites in nnU-Net raw layout (instead of the demo data)")
    sub.add_argument("--sites", nargs="+", help="with --data: site folder names inside it, in training order")
    sub.add_argument("--demo-data", help="demo data folder to build into or reuse (default: OUT/data)")
    sub.add_argument("--resume", action="store_true",
                     help="reuse the runs an earlier call into the same --out finished with identical settings "
                          "(continue after an interruption, or add seeds)")


# -- model versions ------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from dakr.governance.decisions import statuses

    store = _store(args.store)
    versions = store.versions()
    if not versions:
        print("no model versions yet")
        return 0
    status = statuses(store)
    width = max(len("site"), *(len(v.site) for v in versions)) + 2
    print(f"{'':2}{'version':<9}{'parent':<8}{'site':<{width}}{'strategy':<12}{'status':<20}created")
    for v in versions:
        parent = "-" if v.parent is None else str(v.parent)
        state = status[v.id] + (" active" if v.active else "")
        print(f"{'*' if v.active else '':2}{v.id:<9}{parent:<8}{v.site:<{width}}{v.strategy:<12}{state:<20}{v.created}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from dakr.governance.decisions import activate_checked

    version = activate_checked(_store(args.store), args.version)
    print(f"version {version.id} ({version.strategy} on {version.site}) is now active")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dakr.data.io import read_image, write_image
    from dakr.output_paths import check_output_path
    from dakr.shift import predict_with_shift
    from dakr.threads import use_torch_threads

    out = check_output_path(args.out)
    uncertainty = check_output_path(args.uncertainty) if args.uncertainty else None
    store = _store(args.store)
    image = read_image(args.image, trusted_root=Path(args.image).parent)
    use_torch_threads(args.threads)
    result = predict_with_shift(store, image, args.version, source=args.image)
    write_image(result.labels, out)
    print(f"wrote {out}")
    if uncertainty is not None:
        write_image(result.uncertainty, uncertainty)
        print(f"wrote {uncertainty} (voxel-wise normalised entropy, 0 = certain, 1 = uniform)")
    print(result.summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dakr.evaluation.report import write_report

    path = write_report(_store(args.store), Path(args.out) if args.out else Path(args.store) / "report")
    print(f"report: {path}")
    return 0


def add_model_verbs(verbs: Verbs) -> None:
    """``models``, ``rollback``, ``predict`` and ``report``."""
    sub = _verb(verbs, "models", cmd_models, "list model versions with their lineage and gate status (* = active)")
    sub.add_argument("store")
    add_governance_verbs(functools.partial(_verb, verbs))

    sub = _verb(verbs, "rollback", cmd_rollback, "make an earlier version the active one (held or rejected ones need approval)")
    sub.add_argument("store")
    sub.add_argument("version", type=int)

    sub = _verb(verbs, "predict", cmd_predict, "segment a volume; the label map keeps the image's geometry")
    sub.add_argument("store")
    sub.add_argument("image")
    sub.add_argument("out", help="output label map (.nii.gz, .nii, .nrrd or .mha); checked before inference")
    sub.add_argument("--version", type=int, help="model version (default: the active one)")
    sub.add_argument("--uncertainty", metavar="FILE", help="also write the voxel-wise uncertainty map (normalised entropy)")
    _add_threads_option(sub)

    sub = _verb(verbs, "report", cmd_report, "write the HTML audit report of a store")
    sub.add_argument("store")
    sub.add_argument("--out", help="output folder (default STORE/report)")


# -- service -------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from dakr.service import serve_main
    from dakr.service.security import TOKEN_ENV, ServiceConfigError, read_token

    if args.token is not None:
        raise UsageError(
            f"--token is refused: command lines are visible to every user of the machine (ps). "
            f"Fix: put the token in a file only you can read and pass --token-file FILE, or set {TOKEN_ENV}"
        )
    try:
        token = read_token(args.token_file)
    except ServiceConfigError as exc:
        raise UsageError(str(exc)) from exc
    return serve_main(
        args.store,
        host=args.host,
        port=args.port,
        token=token,
        allow_hosts=args.allow_host or (),
        allow_origins=args.allow_origin or (),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        max_upload_mb=args.max_upload_mb,
        max_job_memory_mb=args.max_job_memory_mb,
        parent_pid=args.parent_pid,
    )


def add_service_verbs(verbs: Verbs) -> None:
    """``serve``."""
    sub = _verb(verbs, "serve", cmd_serve, "run the HTTP API for the Slicer module")
    sub.add_argument("store")
    sub.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback requires a token and TLS)")
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument("--token", help=argparse.SUPPRESS)
    sub.add_argument(
        "--token-file", help="file (mode 600) holding the bearer token clients must send (16 or more characters); or set DAKR_TOKEN"
    )
    sub.add_argument("--ssl-certfile", help="TLS certificate (PEM); serves https")
    sub.add_argument("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile")
    sub.add_argument("--allow-host", action="append", metavar="NAME", help="a host name clients use for this server (repeatable)")
    sub.add_argument(
        "--allow-origin", action="append", metavar="ORIGIN", help="a web page origin allowed to call the API (repeatable)"
    )
    sub.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest accepted upload (default 2048 MB)")
    sub.add_argument(
        "--max-job-memory-mb",
        type=float,
        help="refuse adapt jobs whose settings need more memory (default: half of this machine's memory)",
    )
    sub.add_argument("--parent-pid", type=int, help="shut down when this process ends (the Slicer that started the server)")


def build_parser() -> argparse.ArgumentParser:
    """The ``dakr`` parser; building it imports no third-party package."""
    parser = argparse.ArgumentParser(prog="dakr", description="Continual multi-site segmentation with DAKR.")
    parser.add_argument("--version", action="version", version=f"dakr {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add_store_verbs(verbs)
    add_site_verbs(verbs)
    add_training_verbs(verbs)
    add_learning_curve_verb(verbs)
    add_model_verbs(verbs)
    add_service_verbs(verbs)
    return parser


# -- the internal worker entry point -------------------------------------------------------------
WORKER_VERB = "worker"


def worker_parser() -> argparse.ArgumentParser:
    """``dakr worker STORE JOB_ID [--threads N]``: started by the HTTP service for each job, not listed in --help."""
    parser = argparse.ArgumentParser(prog=f"dakr {WORKER_VERB}", description="run one job of the HTTP service")
    parser.add_argument("store")
    parser.add_argument("job_id")
    parser.add_argument("--threads", type=int, help="torch threads chosen by the service")
    return parser


def _run_worker(argv: Sequence[str]) -> int:
    from dakr.service import worker_main

    args = worker_parser().parse_args(argv)
    return worker_main(args.store, args.job_id, threads=args.threads)


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dakr`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER_VERB]:
        return _run_worker(argv[1:])
    args = build_parser().parse_args(argv)
    from dakr.store.records import StoreError

    try:
        return args.handler(args)
    except (UsageError, StoreError, ValueError, FileNotFoundError) as exc:
        print(f"dakr: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt as exc:
        hint = f"; {exc}" if str(exc) else ""
        print(f"dakr: interrupted{hint}", file=sys.stderr)
        return 130
    return 1
