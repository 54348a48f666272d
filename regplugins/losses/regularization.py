"""Deformation regularisers of the papers that MONAI's BendingEnergyLoss and DiffusionLoss do not cover.

Both take a voxel DDF ``(B, N, *spatial)`` and average over voxels, so their weights do not
depend on the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from .utils import reduce_per_sample


def laplacian(ddf: torch.Tensor) -> torch.Tensor:
    """Finite-difference Laplacian of each channel on the interior voxels (a valid convolution)."""
    n, channels = ddf.dim() - 2, ddf.shape[1]
    kernel = ddf.new_zeros([3] * n)
    kernel[(1,) * n] = -2.0 * n
    for axis in range(n):
        for side in (0, 2):
            index = [1] * n
            index[axis] = side
            kernel[tuple(index)] = 1.0
    weight = kernel.expand(channels, 1, *kernel.shape)
    return (F.conv1d, F.conv2d, F.conv3d)[n - 1](ddf, weight, groups=channels)


class LaplacianRegularizationLoss(_Loss):
    """``l1 * mean ||lap(phi)||^2 + l2 * mean ||phi||^2`` (eq. 4 of the paired-data CT/MR paper).

    The Laplacian is the 2N+1-point finite difference on interior voxels; the second term keeps
    the field small where the images give no signal.
    """

    def __init__(self, l1: float = 0.5, l2: float = 0.01, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        self.l1, self.l2 = l1, l2

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        spatial_axes = range(2, ddf.dim())
        if any(ddf.shape[a] < 3 for a in spatial_axes):
            raise ValueError(f"every spatial size must be at least 3 for the Laplacian, got {tuple(ddf.shape[2:])}.")
        smoothness = (laplacian(ddf) ** 2).sum(dim=1).flatten(1).mean(dim=1)
        magnitude = (ddf**2).sum(dim=1).flatten(1).mean(dim=1)
        return reduce_per_sample(self.l1 * smoothness + self.l2 * magnitude, self.reduction)


class TotalVariationLoss(_Loss):
    """``mean_n ||grad phi(n)||_1``: eq. 2 of the FCN paper, averaged instead of summed over voxels.

    The L1 norm of the forward differences penalises large deformations less than the squared
    gradient (MONAI's DiffusionLoss) does, which is why the paper chose it.
    """

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        total = ddf.new_zeros(ddf.shape[0])
        for axis in range(2, ddf.dim()):
            difference = ddf.diff(dim=axis).abs()
            total = total + difference.sum(dim=1).flatten(1).mean(dim=1)
        return reduce_per_sample(total, self.reduction)
