"""Global normalised cross-correlation, the similarity of the FCN and paired-data papers."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from .utils import reduce_per_sample


class GlobalNCCLoss(_Loss):
    """``1 - NCC`` over the whole image of each sample (MONAI's LNCC is the windowed variant).

    ``forward(pred, target)`` with ``(B, C, *spatial)`` tensors; 0 for images related by a
    positive linear intensity map, 1 for uncorrelated ones, 2 for inverted ones.
    """

    def __init__(self, reduction: str = "mean", eps: float = 1e-5):
        super().__init__(reduction=reduction)
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}.")
        p = pred.flatten(1) - pred.flatten(1).mean(dim=1, keepdim=True)
        t = target.flatten(1) - target.flatten(1).mean(dim=1, keepdim=True)
        ncc = (p * t).sum(dim=1) / torch.sqrt((p * p).sum(dim=1) * (t * t).sum(dim=1) + self.eps)
        return reduce_per_sample(1.0 - ncc, self.reduction)
