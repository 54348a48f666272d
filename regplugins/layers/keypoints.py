"""Keypoints as soft-argmax points of heat maps, and the affine that best takes one set of points onto another.

Both work in normalised coordinates (:mod:`regplugins.layers.normalised`), so an affine fitted to
points of a quarter-resolution feature map acts on the full-resolution image as it is.
"""

from __future__ import annotations

import torch

from .normalized import normalized_grid
from .precision import in_float32

__all__ = ["soft_argmax_points", "fit_affine_to_points"]


@in_float32
def soft_argmax_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """``(B, K, N)``: each channel's softmax over space, averaged over the normalised voxel coordinates."""
    points = normalized_grid(heatmaps.shape[2:], heatmaps).flatten(1)
    return torch.einsum("bkv,nv->bkn", heatmaps.flatten(2).softmax(dim=2), points)


@in_float32
def fit_affine_to_points(source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Affines ``(B, N, N + 1)`` taking ``source`` points ``(B, K, N)`` onto ``target`` ones by least squares.

    ``ridge`` pulls the linear part towards the identity, so points that barely spread give
    the identity rather than a singular fit; the translation is not pulled.
    """
    n = source.shape[-1]
    source_mean, target_mean = source.mean(dim=1, keepdim=True), target.mean(dim=1, keepdim=True)
    centered_source, centered_target = source - source_mean, target - target_mean
    identity = torch.eye(n, dtype=source.dtype, device=source.device)
    normal_matrix = centered_source.mT @ centered_source + ridge * identity
    linear = torch.linalg.solve(normal_matrix, centered_source.mT @ centered_target + ridge * identity).mT
    translation = target_mean.mT - linear @ source_mean.mT
    return torch.cat([linear, translation], dim=2)
