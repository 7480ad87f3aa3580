"""An upper estimate of a training job's peak memory from its settings alone.

The server checks it before it starts a job, so config overrides from a client (a huge batch,
patch, buffer or HSIC queue) are refused with a message naming the settings to lower, instead
of driving the machine out of memory. The estimate covers what the settings scale: the
network's activations and their gradients, its weights with the optimiser's and the previous
network's copies, the replay buffer, DAKR's cache of the previous network's buffer features (and logits) and
the HSIC kernel matrices. The site's own volumes and the interpreter come on top; they are
bounded by the upload limits, not by the config. Imports no torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dakr.config import ExperimentConfig

BYTES_PER_VALUE = 4
#: Maps of a level's width that a training step keeps per voxel and sample: the encoder block's
#: two convolutions, normalisations and activations (6) and the decoder block's up-convolution,
#: concatenation (2 widths) and the same six (9).
MAPS_PER_LEVEL = 15
#: Activation gradients alive at once during the backward pass, relative to the activations.
BACKWARD_FACTOR = 0.5
#: Output-sized maps per class and sample: logits, softmax, one-hot target and their gradients.
OUTPUT_MAPS_PER_CLASS = 6
#: Copies of every weight: itself, its gradient, two Adam moments, the previous network and a
#: regulariser's anchor + importance (EWC).
WEIGHT_COPIES = 7
#: n × n matrices an HSIC term holds with their gradients: two kernels, their centred forms and
#: products. n is the larger of CNA's spatial samples and a step's samples, plus the queue.
KERNEL_MATRICES = 8
#: Alignment terms that build kernel matrices (CNA and CRA).
ALIGNMENT_TERMS = 2

#: Share of this machine's memory that one training job may need, unless the server is told otherwise.
DEFAULT_JOB_MEMORY_SHARE = 0.5
#: The default limit where the machine's memory cannot be read (Windows).
FALLBACK_JOB_MEMORY_MB = 8192.0

#: For each part of the estimate, the settings that make it grow.
FIXES = {
    "activations": "train.batch_size, continual.buffer_batch_size, net.patch_size or net.filters",
    "weights": "net.filters or continual.mapping_hidden / mapping_dim",
    "buffer": "continual.buffer_megabytes or continual.buffer_samples",
    "feature cache": ("continual.buffer_megabytes, or set continual.cna_layer to 'bottleneck' "
                      "and continual.lambda_buffer_logits to 0"),
    "kernels": "continual.cna_spatial_samples, continual.hsic_queue, train.batch_size or continual.buffer_batch_size",
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of a training step's peak memory (see :data:`FIXES` for what drives each)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def largest(self) -> str:
        """The part that takes the most memory."""
        return max(self.parts, key=self.parts.__getitem__)

    def explain(self, limit_bytes: int) -> str:
        """Why a job over ``limit_bytes`` is refused, and what to lower."""
        parts = ", ".join(f"{name} {_mb(size)}" for name, size in sorted(self.parts.items(), key=lambda p: -p[1]))
        return (
            f"these settings need about {_mb(self.total)} of memory ({parts}), more than this server allows "
            f"({_mb(limit_bytes)}). Fix: lower {FIXES[self.largest]}, or restart the server with a larger "
            "--max-job-memory-mb"
        )


def estimate_training_memory(config: ExperimentConfig, num_classes: int) -> MemoryEstimate:
    """Peak bytes of one training step of ``config`` with ``num_classes`` output classes (background included)."""
    net, continual = config.net, config.continual
    dims = net.spatial_dims
    voxels = math.prod(net.patch_size)
    samples = config.train.batch_size + continual.buffer_batch_size
    level_values = sum(width * voxels // 2 ** (dims * level) for level, width in enumerate(net.filters))
    activations = samples * (MAPS_PER_LEVEL * level_values * (1 + BACKWARD_FACTOR) + OUTPUT_MAPS_PER_CLASS * num_classes * voxels)
    buffer_values = min(continual.buffer_samples * voxels, int(continual.buffer_megabytes * 2**20) // BYTES_PER_VALUE)
    cached_width = net.filters[0] if continual.cna_layer == "decoder" else net.filters[-1] / 2 ** (dims * (len(net.filters) - 1))
    if continual.lambda_buffer_logits > 0:
        cached_width += num_classes  # the previous network's logits of every buffer sample
    kernel_rows = max(continual.cna_spatial_samples, samples) + continual.hsic_queue
    parts = {
        "activations": activations,
        "weights": WEIGHT_COPIES * (_network_weights(net.filters, dims, num_classes) + _mapping_weights(config)),
        "buffer": buffer_values,
        "feature cache": int(cached_width * buffer_values),
        "kernels": ALIGNMENT_TERMS * KERNEL_MATRICES * kernel_rows**2,
    }
    return MemoryEstimate({name: int(values) * BYTES_PER_VALUE for name, values in parts.items()})


def default_job_memory_mb() -> float:
    """Half of this machine's physical memory, or :data:`FALLBACK_JOB_MEMORY_MB` where it cannot be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_JOB_MEMORY_MB
    return DEFAULT_JOB_MEMORY_SHARE * total / 2**20


def _network_weights(filters: tuple[int, ...], dims: int, num_classes: int) -> int:
    """Weights of the DynUNet that :func:`dakr.nets.factory.build_network` builds (3-wide kernels)."""
    kernel = 3**dims
    total, previous = 0, 1
    for level, width in enumerate(filters):
        total += kernel * (previous * width + width * width)
        if level:
            lower = filters[level - 1]
            total += 2**dims * width * lower + kernel * (2 * lower * lower + lower * lower)
        previous = width
    return total + filters[0] * num_classes


def _mapping_weights(config: ExperimentConfig) -> int:
    continual = config.continual
    return config.net.filters[-1] * continual.mapping_hidden + continual.mapping_hidden * continual.mapping_dim


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"
