"""Rules for the replay buffer stored with a model version.

A buffer is a dict of numpy arrays with a 1-D ``"site"`` array naming the site of each sample.
Every array whose first axis has one entry per sample is per-sample data and is filtered with
it when samples are removed; other arrays (scalars, per-buffer tables) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dakr.store.records import StoreError

SITE_KEY = "site"


def check_buffer(buffer: dict[str, np.ndarray]) -> None:
    """Raise :class:`StoreError` unless ``buffer`` can be stored and purged by site."""
    sites = buffer.get(SITE_KEY)
    if not isinstance(sites, np.ndarray) or sites.ndim != 1:
        raise StoreError(
            f"the buffer has no 1-D {SITE_KEY!r} array. Fix: add buffer[{SITE_KEY!r}] = "
            "np.array([<site of each sample>]) so samples can be purged per site"
        )
    for key, array in buffer.items():
        if not isinstance(array, np.ndarray) or array.dtype.hasobject:
            raise StoreError(
                f"buffer entry {key!r} is not a plain numpy array (object arrays need pickle). "
                "Fix: convert it with np.asarray(..., dtype=np.str_) or a numeric dtype"
            )


def drop_sites(buffer: dict[str, np.ndarray], sites: Iterable[str]) -> dict[str, np.ndarray] | None:
    """``buffer`` without the samples of ``sites``, or ``None`` when it holds none of them."""
    sites = list(sites)
    if not sites:
        return None
    sample_sites = buffer[SITE_KEY]
    keep = ~np.isin(sample_sites, sites)
    if keep.all():
        return None
    n_samples = len(sample_sites)
    return {
        key: array[keep] if array.ndim >= 1 and array.shape[0] == n_samples else array
        for key, array in buffer.items()
    }
