"""Deep self-supervision: the registration loss evaluated at every resolution a network predicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from regplugins.layers import cached_warp


class MultiResolutionRegistrationLoss(_Loss):
    """Weighted sum over resolutions of ``similarity(moving o u_k, fixed) + lambda * regularizer(u_k)``.

    ``forward(ddfs, pair)``: ``ddfs`` is one voxel DDF or a sequence of them, finest first, each in
    voxels of its own grid; ``pair`` is the network input ``(B, 2, *spatial)``, moving in channel
    0 and fixed in channel 1. For a coarser field the pair is average-pooled to that field's size,
    which is how the FCN paper supervises every resolution with image similarity alone.

    Args:
        similarity: a loss ``(warped, fixed) -> scalar``, lower is better (MIND, 1 - NCC, LNCC, ...).
        regularizer: a loss ``ddf -> scalar``, or None.
        regularizer_weight: lambda.
        level_weights: one weight per field, finest first (the paper's 1, 0.6, 0.3).
    """

    def __init__(
        self,
        similarity: nn.Module,
        regularizer: nn.Module | None = None,
        regularizer_weight: float = 0.0,
        level_weights: Sequence[float] = (1.0, 0.6, 0.3),
    ):
        super().__init__()
        self.similarity, self.regularizer = similarity, regularizer
        self.regularizer_weight = regularizer_weight
        self.level_weights = tuple(level_weights)

    def forward(self, ddfs: torch.Tensor | Sequence[torch.Tensor], pair: torch.Tensor) -> torch.Tensor:
        if isinstance(ddfs, torch.Tensor):
            ddfs = [ddfs]
        if len(ddfs) > len(self.level_weights):
            raise ValueError(f"got {len(ddfs)} fields but only {len(self.level_weights)} level weights.")
        total = pair.new_zeros(())
        for weight, ddf in zip(self.level_weights, ddfs):
            images = pair if ddf.shape[2:] == pair.shape[2:] else _area_resize(pair, ddf.shape[2:])
            warped = cached_warp()(images[:, :1], ddf)
            level = self.similarity(warped, images[:, 1:])
            if self.regularizer is not None and self.regularizer_weight:
                level = level + self.regularizer_weight * self.regularizer(ddf)
            total = total + weight * level
        return total


def _area_resize(images: torch.Tensor, size) -> torch.Tensor:
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(size) - 1]
    return pool(images, tuple(size))
