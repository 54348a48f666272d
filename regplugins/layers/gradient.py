"""Gradient intensity maps, the auxiliary modality of the gradient-guided fusion paper (its eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GradientMagnitude(nn.Module):
    """Length of the finite-difference gradient of each channel, by a fixed convolution.

    Edges of CT and MR images coincide even where their intensities do not relate, so the
    gradient maps of both are registered as a second, nearly mono-modal pair.

    Args:
        spatial_dims: number of spatial dimensions.
        difference: ``"forward"``, ``V(x + 1) - V(x)`` along each axis, or ``"central"``,
            ``V(x + 1) - V(x - 1)`` without the 1/2, which is eq. 1 of the paper (Xu et al.,
            arXiv:2011.06216) and keeps the map centred on the edge instead of half a voxel off it.

    The input is padded by replication, so the map keeps the input's shape and a constant image
    maps to zero everywhere, borders included.
    """

    def __init__(self, spatial_dims: int = 3, difference: str = "forward"):
        super().__init__()
        if difference not in ("forward", "central"):
            raise ValueError(f'difference must be "forward" or "central", got "{difference}".')
        self.spatial_dims = spatial_dims
        size = 3 if difference == "central" else 2
        # the output voxel sits at index `size - 2` of the kernel on every axis
        self.padding = [size - 2, 1] * spatial_dims
        kernels = torch.zeros(spatial_dims, 1, *([size] * spatial_dims))
        for axis in range(spatial_dims):
            index = [axis, 0] + [size - 2] * spatial_dims
            index[2 + axis] = 0
            kernels[tuple(index)] = -1.0
            index[2 + axis] = size - 1
            kernels[tuple(index)] = 1.0
        self.register_buffer("kernels", kernels, persistent=False)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch, channels = image.shape[:2]
        flat = image.reshape(batch * channels, 1, *image.shape[2:])
        padded = F.pad(flat, self.padding, mode="replicate")
        differences = self.conv(padded, self.kernels.to(image))
        magnitude = torch.sqrt((differences**2).sum(dim=1, keepdim=True) + 1e-12)
        return magnitude.reshape(batch, channels, *image.shape[2:])
