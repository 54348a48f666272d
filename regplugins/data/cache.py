"""Where a train config keeps the pairs it synthesises: in memory, or on disk for several runs to share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.data import CacheDataset, PersistentDataset


def cached_pairs(
    data: Sequence[dict],
    transform: Callable,
    cache_dir: str | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
) -> CacheDataset | PersistentDataset:
    """The pairs ``transform`` makes from ``data`` (e.g. ``{"seed": s}``), cached in memory or, with ``cache_dir``, on disk.

    On disk each image keeps its grid (``track_meta``): validation warps labels through the
    affines, which a plain-tensor cache drops. MONAI reads such MetaTensors back only without
    ``weights_only``, so a ``cache_dir`` must be a directory that a train config wrote.
    """
    if cache_dir:
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, track_meta=True, weights_only=False)
    return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)
