"""The replay buffer: a bounded, per-site balanced set of training samples of past sites.

Samples are preprocessed 2D slices or 3D patches (image + label) of the same size as training
patches. The budget is a number of samples and a number of bytes; the space is shared equally
by the sites seen so far. Selection is random with a recorded seed (or herding on bottleneck
features). The buffer is rebuilt at the end of every stage and stored with the model version it
belongs to; it only ever holds training cases, never a site's audit split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dakr.config import ContinualConfig
from dakr.data.sampling import PatchSampler
from dakr.nets.factory import encode_to_bottleneck

#: Candidates drawn per kept sample when the selection is herding.
HERDING_POOL_FACTOR = 4


@dataclass
class ReplayBuffer:
    """Buffer contents: ``images`` (N, 1, *patch) float32, ``labels`` (N, 1, *patch) uint8, ``sites`` (N,) str."""

    images: np.ndarray
    labels: np.ndarray
    sites: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes + self.labels.nbytes)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` samples (see :meth:`sample_indices`): (images float32, labels int64)."""
        index = self.sample_indices(batch_size, rng)
        return self.images[index], self.labels[index].astype(np.int64)

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Positions of ``batch_size`` samples, uniformly at random and without replacement.

        A buffer smaller than the batch contributes every sample once per full pass (random
        permutations one after the other), so no sample repeats before all have been used.
        """
        passes = -(-batch_size // len(self))
        return np.concatenate([rng.permutation(len(self)) for _ in range(passes)])[:batch_size]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The form stored next to a model version (``np.savez``, no pickled objects)."""
        return {"image": self.images, "label": self.labels, "site": self.sites.astype(np.str_)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ReplayBuffer":
        return cls(arrays["image"], arrays["label"], arrays["site"].astype(np.str_))

    @classmethod
    def empty(cls, patch_size: tuple[int, ...]) -> "ReplayBuffer":
        return cls(
            np.zeros((0, 1, *patch_size), np.float32), np.zeros((0, 1, *patch_size), np.uint8), np.zeros((0,), np.str_)
        )

    def site_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.sites, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}


def capacity(config: ContinualConfig, patch_size: tuple[int, ...]) -> int:
    """Number of samples that fit both the sample budget and the byte budget."""
    per_sample = int(np.prod(patch_size)) * (4 + 1)
    by_bytes = int(config.buffer_megabytes * 1e6) // per_sample
    return max(0, min(config.buffer_samples, by_bytes))


def update_buffer(
    buffer: ReplayBuffer,
    site: str,
    sampler: PatchSampler,
    config: ContinualConfig,
    rng: np.random.Generator,
    model: nn.Module | None = None,
) -> ReplayBuffer:
    """The buffer after a stage on ``site``: old sites shrunk to the new per-site quota, the new site added.

    ``sampler`` draws from the new site's training cases only. ``model`` is needed for herding.
    """
    patch_size = tuple(buffer.images.shape[2:])
    total = capacity(config, patch_size)
    old_sites = [s for s in dict.fromkeys(buffer.sites.tolist()) if s != site]
    quotas = _balanced_quotas(total, old_sites + [site])
    keep: list[np.ndarray] = []
    for old in old_sites:
        index = np.flatnonzero(buffer.sites == old)
        keep.append(np.sort(rng.choice(index, size=min(quotas[old], len(index)), replace=False)))
    kept = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    new_images, new_labels = _select_new(sampler, quotas[site], config, rng, model)
    return ReplayBuffer(
        np.concatenate([buffer.images[kept], new_images]),
        np.concatenate([buffer.labels[kept], new_labels]),
        np.concatenate([buffer.sites[kept], np.full(len(new_images), site)]).astype(np.str_),
    )


def _balanced_quotas(total: int, sites: list[str]) -> dict[str, int]:
    base, extra = divmod(total, len(sites))
    # The newest sites get the remainder so that no old site loses more than it must.
    return {s: base + (1 if i >= len(sites) - extra else 0) for i, s in enumerate(sites)}


def _select_new(
    sampler: PatchSampler, count: int, config: ContinualConfig, rng: np.random.Generator, model: nn.Module | None
) -> tuple[np.ndarray, np.ndarray]:
    if count == 0:
        images, labels = sampler.sample(1, rng)
        return images[:0], labels[:0].astype(np.uint8)
    if config.buffer_selection == "herding" and model is not None:
        images, labels = sampler.sample(count * HERDING_POOL_FACTOR, rng)
        chosen = herding_selection(_bottleneck_vectors(model, images), count)
        return images[chosen], labels[chosen].astype(np.uint8)
    images, labels = sampler.sample(count, rng)
    return images, labels.astype(np.uint8)


@torch.no_grad()
def _bottleneck_vectors(model: nn.Module, images: np.ndarray, chunk: int = 32) -> np.ndarray:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    vectors = [
        encode_to_bottleneck(model, torch.from_numpy(images[i : i + chunk]).to(device)).float().mean(
            dim=tuple(range(2, images.ndim))
        ).cpu().numpy()
        for i in range(0, len(images), chunk)
    ]
    model.train(was_training)
    return np.concatenate(vectors)


def herding_selection(features: np.ndarray, count: int) -> np.ndarray:
    """Greedy herding (Welling 2009, as in iCaRL): pick samples whose running mean tracks the feature mean."""
    target = features.mean(axis=0)
    chosen: list[int] = []
    running = np.zeros_like(target)
    available = np.ones(len(features), dtype=bool)
    for k in range(1, count + 1):
        candidates = (running * (k - 1) + features) / k
        distance = np.linalg.norm(candidates - target, axis=1)
        distance[~available] = np.inf
        best = int(np.argmin(distance))
        chosen.append(best)
        available[best] = False
        running = candidates[best]
    return np.array(chosen, dtype=np.int64)
