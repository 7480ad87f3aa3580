"""The product's operations on a store: adapt to a site, evaluate a version, predict, audit.

These functions are what the CLI, the worker processes of the HTTP service and the benchmark
call. ``adapt`` implements the data flow of "Adapt to new site": load the active version, its
buffer and the new site's training cases, train one stage with a strategy, update the buffer,
register the new version, evaluate it and its parent on every site's audit cases, apply the
acceptance policy (:mod:`dakr.governance`) and activate it if the gate allows and the active
version is still its parent.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
import torch
from monai.utils import set_determinism
from torch import nn

from dakr.config import ExperimentConfig
from dakr.continual.buffer import ReplayBuffer, update_buffer
from dakr.continual.strategies import get_strategy
from dakr.data.io import read_image
from dakr.data.preprocessing import PreprocessedCase, check_prediction_grid, preprocess_case
from dakr.data.sampling import PatchSampler
from dakr.distributed import wait_for_all_ranks
from dakr.evaluation.metrics import dice_per_class, hd95_per_class
from dakr.governance.decisions import activation_outcome, gate_new_version
from dakr.governance.provenance import collect_provenance
from dakr.inference import default_device, predict_volume
from dakr.nets.factory import build_network
from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.resume import (
    RunRecord,
    mark_done,
    new_run,
    recorded_parent,
    refuse_unfinished_run,
    require_same_job,
    saved_run_to_resume,
    stored_version,
)
from dakr.stage_config import describe_stage, stage_config
from dakr.store import EvaluationRecord, Store, StoreError, VersionInfo
from dakr.store.runs import activate_if_parent_still_active
from dakr.store.validation_split import validation_case_ids
from dakr.training.strategy import StageContext, Strategy
from dakr.training.trainer import Trainer, is_main_process, seeded_rng

NETWORK_PREFIX = "net."
STRATEGY_PREFIX = "strategy."


# -- versions and models -------------------------------------------------------------------------
def lineage(store: Store, version: VersionInfo | None) -> list[VersionInfo]:
    """The chain of versions from the base model to ``version`` (empty for ``None``)."""
    chain: list[VersionInfo] = []
    while version is not None:
        chain.append(version)
        version = store.version(version.parent) if version.parent is not None else None
    return chain[::-1]


def label_values(store: Store) -> list[int]:
    """Sorted label values of the store; class index ``i`` of a network is value ``label_values[i]``."""
    if not store.label_names:
        raise StoreError(f"store {store.path} has no sites yet. Fix: add one with `dakr site add`")
    return sorted(store.label_names.values())


def build_model(config: ExperimentConfig, num_classes: int, tensors: dict[str, torch.Tensor] | None, device: torch.device) -> nn.Module:
    """A network from ``config`` with the ``net.*`` weights of ``tensors`` (random init when ``None``)."""
    model = build_network(config.net, num_classes)
    if tensors is not None:
        model.load_state_dict({k[len(NETWORK_PREFIX):]: v for k, v in tensors.items() if k.startswith(NETWORK_PREFIX)})
    return model.to(device)


@functools.lru_cache(maxsize=4)
def _cached_model(store_path: str, version_id: int, device: str) -> tuple[nn.Module, ExperimentConfig, list[int]]:
    store = Store.open(store_path)
    version = store.version(version_id)
    config = ExperimentConfig.from_dict(version.config)
    values = label_values(store)
    model = build_model(config, len(values), store.load_tensors(version_id), torch.device(device))
    return model.eval(), config, values


def load_version_model(store: Store, version_id: int, device: torch.device | None = None) -> tuple[nn.Module, ExperimentConfig, list[int]]:
    """(network in eval mode, config, label values) of a stored version; versions are immutable, so cached."""
    return _cached_model(str(store.path), version_id, str(device or default_device()))


# -- data ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _preprocessed(image: str, label: str, preprocess_json: str, case_id: str) -> PreprocessedCase:
    config = ExperimentConfig.from_dict({"preprocess": json.loads(preprocess_json)}).preprocess
    return preprocess_case(image, label, config, case_id=case_id)


def training_cases(
    store: Store, sites: list[str], config: ExperimentConfig, values: list[int], only: dict[str, set[str]] | None = None
) -> list[PreprocessedCase]:
    """Preprocessed training cases of ``sites`` with labels as class indices.

    Purged sites contribute none; validation cases (:mod:`dakr.store.validation_split`) are left
    out; ``only`` restricts a site's training cases to the given case ids.
    """
    key = json.dumps(config.to_dict()["preprocess"], sort_keys=True)
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    lookup[values] = np.arange(len(values), dtype=np.uint8)
    cases = []
    for site in sites:
        allowed = (only or {}).get(site)
        held_out = validation_case_ids(store, site)
        for record in store.cases(site, "train"):
            excluded = record.case_id in held_out or (allowed is not None and record.case_id not in allowed)
            if record.image_path is None or record.label_path is None or excluded:
                continue
            case = _preprocessed(str(record.image_path), str(record.label_path), key, record.case_id)
            cases.append(PreprocessedCase(case.case_id, case.image, lookup[case.label], case.reference))
    return cases


def training_sampler(
    store: Store, sites: list[str], config: ExperimentConfig, values: list[int], only: dict[str, set[str]] | None = None
) -> PatchSampler:
    """A patch sampler over the training cases of ``sites`` with the config's patch size and oversampling."""
    return PatchSampler(
        training_cases(store, sites, config, values, only),
        tuple(config.net.patch_size),
        config.net.spatial_dims,
        config.train.foreground_oversample,
    )


# -- adapt ---------------------------------------------------------------------------------------
def adapt(
    store: Store,
    site: str,
    *,
    strategy: str = "dakr",
    overrides: dict[str, Any] | None = None,
    progress: ProgressCallback = null_progress,
    work_dir: str | Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device | None = None,
    activate: str | None = None,
    job_id: str | None = None,
    train_case_ids: set[str] | None = None,
    evaluate: bool = True,
) -> VersionInfo | None:
    """Train a new version on ``site`` from the active version (the base model when there is none).

    ``evaluate=False`` skips the audit evaluation (tuning runs score on validation cases instead).
    Returns the new version (``None`` on non-zero ranks of a distributed run, which never write
    to the store). Raises :class:`~dakr.training.TrainingCancelled` when ``should_stop`` fires.
    The checkpoints in ``work_dir`` record the job (``job_id`` for a service job); with
    ``resume=True`` the run continues from its checkpoint and its recorded parent, or finishes
    the version it already stored (:mod:`dakr.resume`).
    The gate (:func:`~dakr.governance.decisions.gate_new_version`) decides activation: by the
    store's policy when ``activate`` is ``None``, else ``"never"``, ``"if-accepted"`` or
    ``"always"`` (recorded as an override if held); without the audit evaluation there is no gate
    and only ``"always"`` activates. Either way the version is activated only if the active
    version is still its parent (:func:`~dakr.store.runs.activate_if_parent_still_active`).
    ``train_case_ids`` trains on only these training cases of ``site`` (e.g. the first k cases
    of a labelling order).
    """
    started = time.perf_counter()
    site_info = store.site(site)
    if site_info.purged:
        raise StoreError(f"site {site!r} was purged; its images are gone. Fix: register the site again under a new name")
    device = device or default_device()
    if resume:
        saved = saved_run_to_resume(store, work_dir)
        parent = recorded_parent(store, saved, work_dir)
    else:
        if is_main_process():  # other ranks may already see the first checkpoint rank 0 wrote for this run
            refuse_unfinished_run(work_dir)
        saved, parent = None, store.active_version()
    strategy_cls = get_strategy(strategy)
    config = stage_config(parent, overrides)
    for line in describe_stage(parent, config):
        progress(ProgressEvent(stage="config", message=line))
    run = new_run(store, site=site, strategy=strategy, parent=parent, config=config, job_id=job_id)
    if saved is not None:
        run = require_same_job(saved, run, work_dir)
    chain = lineage(store, parent)
    version_id = stored_version(store, saved, work_dir) if saved is not None else None
    if version_id is None:
        version_id = _train_and_store(
            store, run, parent, chain, config, strategy_cls, progress, work_dir, resume, should_stop, device,
            {site: set(train_case_ids)} if train_case_ids is not None else None,
        )
    else:
        progress(ProgressEvent(stage="resume", message=f"this run already stored version {version_id}; finishing it"))
    if not is_main_process():
        return None
    if work_dir is not None:
        mark_done(work_dir, run, version_id)
    if not evaluate:
        if activate == "always":
            progress(ProgressEvent(stage="activate", message=activate_if_parent_still_active(store, version_id, run.parent).message))
        return store.version(version_id)
    for evaluated in [version_id, *[v.id for v in chain[:1]], *([parent.id] if parent else [])]:
        evaluate_version(store, evaluated, progress=progress, only_missing=True, device=device)
    past_sites = list(dict.fromkeys(v.site for v in chain))
    train_sites = strategy_cls(config).training_sites(site, past_sites)
    provenance = collect_provenance(store, version_id, train_sites, device, time.perf_counter() - started)
    decision = gate_new_version(store, store.version(version_id), past_sites, activate, provenance)
    progress(ProgressEvent(stage="gate", message=decision.summary()))
    version = store.version(version_id)
    progress(ProgressEvent(stage="activate", message=activation_outcome(store, version)))
    return version


def _train_and_store(
    store: Store,
    run: RunRecord,
    parent: VersionInfo | None,
    chain: list[VersionInfo],
    config: ExperimentConfig,
    strategy_cls: type[Strategy],
    progress: ProgressCallback,
    work_dir: str | Path | None,
    resume: bool,
    should_stop: Callable[[], bool] | None,
    device: torch.device,
    only: dict[str, set[str]] | None,
) -> int | None:
    """Train one stage of ``run`` and store its version (inactive); returns its id (``None`` off rank 0).

    ``only`` restricts a site's training cases to the given case ids.
    """
    set_determinism(seed=config.train.seed)
    values = label_values(store)
    parent_tensors = store.load_tensors(parent.id) if parent else None
    # Built before the strategy so that every strategy starts from the same initial network.
    model = build_model(config, len(values), parent_tensors, device)
    method = strategy_cls(config)
    past_sites = list(dict.fromkeys(v.site for v in chain))
    train_sites = method.training_sites(run.site, past_sites)
    sampler = training_sampler(store, train_sites, config, values, only)
    previous = _frozen_copy(model) if parent is not None and method.needs_previous_model else None
    stored_buffer = store.load_buffer(parent.id) if parent else None
    buffer = ReplayBuffer.from_arrays(stored_buffer) if stored_buffer else ReplayBuffer.empty(tuple(config.net.patch_size))
    inherited = {k[len(STRATEGY_PREFIX):]: v for k, v in (parent_tensors or {}).items() if k.startswith(STRATEGY_PREFIX)}
    method.load_state_tensors(inherited)
    ctx = StageContext(
        config=config,
        model=_distributed(model, device),
        sampler=sampler,
        num_classes=len(values),
        device=device,
        rng=seeded_rng(config.train.seed, len(chain) + 1),
        stage=len(chain) + 1,
        site=run.site,
        previous_model=previous,
        buffer=buffer if parent is not None else None,
        inherited_state=inherited,
    )
    trainer = Trainer(ctx, method, progress=progress, checkpoint_dir=work_dir, should_stop=should_stop, run=run.to_dict())
    trainer.fit(resume=resume)
    wait_for_all_ranks()
    if not is_main_process():
        return None
    progress(ProgressEvent(stage="buffer", message="updating the replay buffer"))
    site_sampler = sampler if train_sites == [run.site] else training_sampler(store, [run.site], config, values, only)
    new_buffer = update_buffer(buffer, run.site, site_sampler, config.continual, seeded_rng(config.train.seed, ctx.stage, purpose=1), model)
    tensors = {NETWORK_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors.update({STRATEGY_PREFIX + k: v for k, v in method.state_tensors().items()})
    return store.add_version(
        parent=run.parent,
        site=run.site,
        strategy=run.strategy,
        config=config.to_dict(),
        seed=config.train.seed,
        tensors=tensors,
        buffer=new_buffer.to_arrays(),
        activate=False,
        run_id=run.run_id,
        job_id=run.job_id,
    ).id


def _frozen_copy(model: nn.Module) -> nn.Module:
    previous = copy.deepcopy(model).eval()
    for parameter in previous.parameters():
        parameter.requires_grad_(False)
    return previous


def _distributed(model: nn.Module, device: torch.device) -> nn.Module:
    if not torch.distributed.is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


# -- evaluation ----------------------------------------------------------------------------------
def evaluate_version(
    store: Store,
    version_id: int,
    *,
    sites: list[str] | None = None,
    progress: ProgressCallback = null_progress,
    only_missing: bool = False,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Evaluate a version on the audit cases of ``sites`` (default: every non-purged site).

    Records per-case Dice and HD95 per class, caches each prediction for the audit view and
    returns the mean foreground Dice per site.
    """
    model, config, values = load_version_model(store, version_id, device)
    names = {value: name for name, value in store.label_names.items()}
    targets = [s.name for s in store.sites() if not s.purged and (sites is None or s.name in sites)]
    done = {(r.site, r.case_id) for r in store.evaluations(version=version_id)} if only_missing else set()
    work = [(s, c) for s in targets for c in store.cases(s, "audit") if (s, c.case_id) not in done and c.image_path]
    records = []
    for index, (site, case) in enumerate(work, start=1):
        image, truth = read_image(case.image_path), read_image(case.label_path)
        prediction = predict_volume(model, image, config, values, device or default_device())
        store.write_prediction(version_id, site, case.case_id, prediction)
        predicted, reference = sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(truth)
        foreground = [v for v in values if v != 0]
        dice = dice_per_class(predicted, reference, foreground)
        hd95 = hd95_per_class(predicted, reference, foreground, truth.GetSpacing())
        records.append(
            EvaluationRecord(version_id, site, case.case_id, {names[v]: dice[v] for v in foreground}, {names[v]: hd95[v] for v in foreground})
        )
        progress(ProgressEvent(stage="evaluate", step=index, total=len(work), message=f"version {version_id}, {site}/{case.case_id}"))
    store.record_evaluations(records)
    return {site: store.site_dice(version_id, site) for site in targets}


# -- prediction and audit ------------------------------------------------------------------------
def predict_image(
    store: Store, image: sitk.Image, version: int | None = None, device: torch.device | None = None, *, source: str = "the volume"
) -> sitk.Image:
    """Label map of ``image`` (its exact geometry) by ``version`` (default: the active one).

    Raises :class:`dakr.data.errors.ImageGridError` (naming ``source``) for an absurd spacing
    or a resampled grid over the limits, before any resampling.
    """
    version_id = version if version is not None else require_active_version(store).id
    model, config, values = load_version_model(store, version_id, device)
    check_prediction_grid(source, image, config.preprocess)
    return predict_volume(model, image, config, values, device or default_device())


def audit_prediction(store: Store, version: int, site: str, case_id: str) -> Path:
    """Path of the (cached) prediction of ``version`` for a stored case."""
    path = store.prediction_path(version, site, case_id)
    if not path.exists():
        record = next((c for c in store.cases(site) if c.case_id == case_id), None)
        if record is None or record.image_path is None:
            raise StoreError(f"case {case_id!r} of site {site!r} is not stored (unknown or purged)")
        store.write_prediction(version, site, case_id, predict_image(store, read_image(record.image_path), version))
    return path


def require_active_version(store: Store) -> VersionInfo:
    """The active version; :class:`StoreError` with the fix while the store has no model yet."""
    active = store.active_version()
    if active is None:
        raise StoreError(f"store {store.path} has no model yet. Fix: run `dakr adapt {store.path} --site <first site>`")
    return active
