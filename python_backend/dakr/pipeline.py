"""The product's operations on a store: adapt to a site, evaluate a version, predict, audit.

These functions are what the CLI, the worker processes of the HTTP service and the benchmark
call. ``adapt`` implements the data flow of "Adapt to new site": load the active version, its
buffer and the new site's training cases, train one stage with a strategy, update the buffer,
register the new version, evaluate it and its parent on every site's audit cases, apply the
acceptance policy (:mod:`dakr.governance`) and activate it if the gate allows.
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

from dakr.config import ConfigError, ExperimentConfig, apply_overrides, flatten
from dakr.continual.buffer import ReplayBuffer, update_buffer
from dakr.continual.strategies import get_strategy
from dakr.data.io import read_image, write_image
from dakr.data.preprocessing import PreprocessedCase, preprocess_case
from dakr.data.sampling import PatchSampler
from dakr.evaluation.metrics import dice_per_class, hd95_per_class
from dakr.governance.decisions import gate_new_version
from dakr.governance.provenance import collect_provenance
from dakr.inference import default_device, predict_volume
from dakr.nets.factory import build_network
from dakr.progress import ProgressCallback, ProgressEvent, null_progress
from dakr.store import EvaluationRecord, Store, StoreError, VersionInfo
from dakr.training.strategy import StageContext
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


def stage_config(store: Store, parent: VersionInfo | None, overrides: dict[str, Any] | None) -> ExperimentConfig:
    """The parent's config with ``overrides`` applied; preprocessing and network are fixed by the base model."""
    overrides = dict(overrides or {})
    if parent is None:
        return apply_overrides(ExperimentConfig(), overrides)
    inherited = ExperimentConfig.from_dict(parent.config)
    current = flatten(inherited.to_dict())
    requested = flatten(apply_overrides(inherited, overrides).to_dict())
    fixed = [k for k in overrides if k.startswith(("net.", "preprocess.")) and requested[k] != current[k]]
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot change after the base model: they are fixed by version {parent.id}. "
            "Fix: drop these overrides, or start a new store"
        )
    return apply_overrides(inherited, overrides)


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


def training_cases(store: Store, sites: list[str], config: ExperimentConfig, values: list[int]) -> list[PreprocessedCase]:
    """Preprocessed training cases of ``sites`` with labels as class indices (purged sites contribute none)."""
    key = json.dumps(config.to_dict()["preprocess"], sort_keys=True)
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    lookup[values] = np.arange(len(values), dtype=np.uint8)
    cases = []
    for site in sites:
        for record in store.cases(site, "train"):
            if record.image_path is None or record.label_path is None:
                continue
            case = _preprocessed(str(record.image_path), str(record.label_path), key, record.case_id)
            cases.append(PreprocessedCase(case.case_id, case.image, lookup[case.label], case.reference))
    return cases


def training_sampler(store: Store, sites: list[str], config: ExperimentConfig, values: list[int]) -> PatchSampler:
    """A patch sampler over the training cases of ``sites`` with the config's patch size and oversampling."""
    return PatchSampler(
        training_cases(store, sites, config, values),
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
) -> VersionInfo | None:
    """Train a new version on ``site`` from the active version (the base model when there is none).

    Returns the new version (``None`` on non-zero ranks of a distributed run, which never write
    to the store). The gate decides activation: by the store's policy when ``activate`` is ``None``,
    else ``"never"``, ``"if-accepted"`` or ``"always"`` (recorded as an override if held). Raises
    :class:`~dakr.training.TrainingCancelled` when ``should_stop`` fires; with the same
    ``work_dir`` and ``resume=True`` the run continues from its checkpoint.
    """
    started = time.perf_counter()
    site_info = store.site(site)
    if site_info.purged:
        raise StoreError(f"site {site!r} was purged; its images are gone. Fix: register the site again under a new name")
    device = device or default_device()
    parent = store.active_version()
    strategy_cls = get_strategy(strategy)
    config = stage_config(store, parent, overrides)
    set_determinism(seed=config.train.seed)
    values = label_values(store)
    parent_tensors = store.load_tensors(parent.id) if parent else None
    # Built before the strategy so that every strategy starts from the same initial network.
    model = build_model(config, len(values), parent_tensors, device)
    chain = lineage(store, parent)
    past_sites = list(dict.fromkeys(v.site for v in chain))
    method = strategy_cls(config)
    train_sites = method.training_sites(site, past_sites)
    sampler = training_sampler(store, train_sites, config, values)
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
        site=site,
        previous_model=previous,
        buffer=buffer if parent is not None else None,
        inherited_state=inherited,
    )
    Trainer(ctx, method, progress=progress, checkpoint_dir=work_dir, should_stop=should_stop).fit(resume=resume)
    if not is_main_process():
        return None
    progress(ProgressEvent(stage="buffer", message="updating the replay buffer"))
    site_sampler = sampler if train_sites == [site] else training_sampler(store, [site], config, values)
    new_buffer = update_buffer(buffer, site, site_sampler, config.continual, seeded_rng(config.train.seed, ctx.stage, purpose=1), model)
    tensors = {NETWORK_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors.update({STRATEGY_PREFIX + k: v for k, v in method.state_tensors().items()})
    version = store.add_version(
        parent=parent.id if parent else None,
        site=site,
        strategy=strategy,
        config=config.to_dict(),
        seed=config.train.seed,
        tensors=tensors,
        buffer=new_buffer.to_arrays(),
        activate=False,
    )
    for evaluated in [version, *chain[:1], *([parent] if parent else [])]:
        evaluate_version(store, evaluated.id, progress=progress, only_missing=evaluated.id != version.id, device=device)
    provenance = collect_provenance(store, version.id, train_sites, device, time.perf_counter() - started)
    decision = gate_new_version(store, version, past_sites, activate, provenance)
    return store.activate(version.id) if decision.activated else store.version(version.id)


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
        write_image(prediction, store.prediction_path(version_id, site, case.case_id))
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
def predict_image(store: Store, image: sitk.Image, version: int | None = None, device: torch.device | None = None) -> sitk.Image:
    """Label map of ``image`` (its exact geometry) by ``version`` (default: the active one)."""
    version_id = version if version is not None else _active_id(store)
    model, config, values = load_version_model(store, version_id, device)
    return predict_volume(model, image, config, values, device or default_device())


def audit_prediction(store: Store, version: int, site: str, case_id: str) -> Path:
    """Path of the (cached) prediction of ``version`` for a stored case."""
    path = store.prediction_path(version, site, case_id)
    if not path.exists():
        record = next((c for c in store.cases(site) if c.case_id == case_id), None)
        if record is None or record.image_path is None:
            raise StoreError(f"case {case_id!r} of site {site!r} is not stored (unknown or purged)")
        write_image(predict_image(store, read_image(record.image_path), version), path)
    return path


def _active_id(store: Store) -> int:
    active = store.active_version()
    if active is None:
        raise StoreError(f"store {store.path} has no model yet. Fix: run `dakr adapt {store.path} --site <first site>`")
    return active.id
