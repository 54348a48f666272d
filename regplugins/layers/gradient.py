"""Gradient intensity maps, the auxiliary modality of the gradient-guided fusion paper (its eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GradientMagnitude(nn.Module):
    """Length of the forward-difference gradient of each channel, by a fixed convolution.

    Edges of CT and MR images coincide even where their intensities do not relate, so the
    gradient maps of both are registered as a second, nearly mono-modal pair. The input is
    padded by replication at the far end of each axis, so the map keeps the input's shape.
    """

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims
        kernels = torch.zeros(spatial_dims, 1, *([2] * spatial_dims))
        for axis in range(spatial_dims):
            index = [axis, 0] + [0] * spatial_dims
            kernels[tuple(index)] = -1.0
            index[2 + axis] = 1
            kernels[tuple(index)] = 1.0
        self.register_buffer("kernels", kernels, persistent=False)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch, channels = image.shape[:2]
        flat = image.reshape(batch * channels, 1, *image.shape[2:])
        padded = F.pad(flat, [0, 1] * self.spatial_dims, mode="replicate")
        differences = self.conv(padded, self.kernels.to(image))
        magnitude = torch.sqrt((differences**2).sum(dim=1, keepdim=True) + 1e-12)
        return magnitude.reshape(batch, channels, *image.shape[2:])
