"""Mutual information from a joint histogram with linear Parzen windows: MONAI's measure at a fraction of its CPU time.

MONAI's ``GlobalMutualInformationLoss`` spreads each sample over every bin with a Gaussian
(an ``exp`` per sample and bin, forward and backward): 15 ms a call for 8,192 samples on two
CPU cores, most of the pre-alignment's and the refinement's time. A triangular window puts a
sample into its two nearest bins, weighted linearly (the histogram of linear interpolation), so
the joint histogram is one matrix product of two sparse-valued weight matrices and the whole
loss a few elementwise operations; the value and its gradient are continuous in the samples,
which is what an optimiser needs.
"""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from .utils import reduce_per_sample

__all__ = ["ParzenMutualInformationLoss"]


class ParzenMutualInformationLoss(_Loss):
    """Negative mutual information of two images' intensities, in [0, 1], from a ``num_bins`` joint histogram.

    ``forward(pred, target)`` takes ``(B, ...)`` tensors of one shape (images, or samples of
    them) and returns the negative mutual information in nats, one value per sample reduced
    by ``reduction``. Values outside [0, 1] are clipped.
    """

    def __init__(self, num_bins: int = 32, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}.")
        self.num_bins = int(num_bins)

    def _weights(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, K, num_bins)`` triangular window weights of ``(B, K)`` values: each row sums to 1."""
        position = values.clamp(0.0, 1.0).unsqueeze(-1) * (self.num_bins - 1)
        centers = torch.arange(self.num_bins, device=values.device, dtype=values.dtype)
        return (1.0 - (position - centers).abs()).clamp(min=0.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}.")
        pred, target = pred.reshape(pred.shape[0], -1).float(), target.reshape(target.shape[0], -1).float()
        joint = self._weights(target).transpose(1, 2) @ self._weights(pred) / pred.shape[1]
        marginals = joint.sum(2, keepdim=True) * joint.sum(1, keepdim=True)
        eps = torch.finfo(joint.dtype).tiny
        information = (joint * (torch.log(joint + eps) - torch.log(marginals + eps))).sum((1, 2))
        return reduce_per_sample(-information, self.reduction)
