"""Fields in normalised coordinates, ``p = 2 i / (S - 1) - 1`` per spatial axis (in the spatial axes' order).

A normalised displacement means the same on grids of one extent and different resolutions, so
FIRE (:class:`regplugins.networks.FIRENet`) warps images and quarter-resolution feature maps by
one field, and its affines act on such points as a spatial transformer network's do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .precision import in_float32
from .spatial import cached_warp, voxel_grid

__all__ = ["normalized_grid", "normalized_to_voxel", "resize_normalized", "warp_normalized", "normalized_affine_flow"]


def _half_extent(spatial_shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    n = len(spatial_shape)
    return torch.tensor([(s - 1) / 2.0 for s in spatial_shape], dtype=like.dtype, device=like.device).view(n, *([1] * n))


def normalized_to_voxel(flow: torch.Tensor) -> torch.Tensor:
    """Voxel DDF of a normalised displacement field ``(B, N, *S)`` on its own grid."""
    return flow * _half_extent(flow.shape[2:], flow)


@in_float32
def resize_normalized(flow: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """The field interpolated onto another resolution of its grid; normalised values need no rescaling."""
    if tuple(flow.shape[2:]) == tuple(spatial_shape):
        return flow
    mode = "bilinear" if len(spatial_shape) == 2 else "trilinear"
    return F.interpolate(flow, size=tuple(spatial_shape), mode=mode, align_corners=True)


def warp_normalized(volume: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``volume o phi`` for a normalised field on any resolution of the volume's grid (MONAI's Warp)."""
    return cached_warp()(volume, normalized_to_voxel(resize_normalized(flow, volume.shape[2:])))


def normalized_grid(spatial_shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates ``(N, *spatial_shape)`` of the grid's points, on ``like``'s device and dtype."""
    return voxel_grid(spatial_shape, device=like.device, dtype=like.dtype) / _half_extent(spatial_shape, like) - 1


@in_float32
def normalized_affine_flow(theta: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Normalised displacement ``theta p - p`` of affines ``(B, N, N + 1)`` acting on normalised points."""
    n = len(spatial_shape)
    points = normalized_grid(spatial_shape, theta)
    moved = torch.einsum("bij,j...->bi...", theta[:, :, :n], points) + theta[:, :, n].reshape(-1, n, *([1] * n))
    return moved - points
