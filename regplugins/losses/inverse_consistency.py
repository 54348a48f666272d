"""Inverse consistency: the forward and backward fields composed should give the identity."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from regplugins.layers import compose_ddf

from .utils import reduce_per_sample


class InverseConsistencyLoss(_Loss):
    """``mean ||u_ab o u_ba||^2 + mean ||u_ba o u_ab||^2`` over voxels, halved.

    The fields are composed (each is sampled at the points the other moves to), never added:
    adding is only right for infinitesimal deformations. Both are voxel DDFs on one grid.
    """

    def forward(self, ddf_ab: torch.Tensor, ddf_ba: torch.Tensor) -> torch.Tensor:
        if ddf_ab.shape != ddf_ba.shape:
            raise ValueError(f"both fields must be on one grid, got {tuple(ddf_ab.shape)} and {tuple(ddf_ba.shape)}.")
        there_and_back = compose_ddf(ddf_ba, ddf_ab)
        back_and_there = compose_ddf(ddf_ab, ddf_ba)
        per_sample = 0.5 * sum((c**2).sum(dim=1).flatten(1).mean(dim=1) for c in (there_and_back, back_and_there))
        return reduce_per_sample(per_sample, self.reduction)
