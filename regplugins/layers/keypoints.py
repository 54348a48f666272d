"""Keypoints as soft-argmax points of heat maps (their affine fit: :func:`regplugins.layers.fit_affine_to_points`).

They are in normalised coordinates (:mod:`regplugins.layers.normalised`), so an affine fitted to
points of a quarter-resolution feature map acts on the full-resolution image as it is.
"""

from __future__ import annotations

import torch

from .normalized import normalized_grid
from .precision import in_float32

__all__ = ["soft_argmax_points"]


@in_float32
def soft_argmax_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """``(B, K, N)``: each channel's softmax over space, averaged over the normalised voxel coordinates."""
    points = normalized_grid(heatmaps.shape[2:], heatmaps).flatten(1)
    return torch.einsum("bkv,nv->bkn", heatmaps.flatten(2).softmax(dim=2), points)
