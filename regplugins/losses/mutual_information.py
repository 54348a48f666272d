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

    def value_and_gradient(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of ``forward`` for one sample ``(K,)`` of each image, and its gradient with respect to ``pred`` ``(K,)``.

        Written out without autograd, for a fit that needs it thousands of times: each value falls
        in two bins, so the joint histogram is four scatters, and the derivative of the mutual
        information with respect to the histogram, ``log p(t, p) - log p(t) p(p)``, is read back at
        the four bins of each sample. ``pred`` ``(..., K)`` may carry a batch of samples (of one
        image moved by several transforms) against one ``target`` ``(K,)``, one loss each; ``weights``
        (``pred``'s shape, 0 or 1) leave a sample out of its histogram, as if it had not been drawn.
        """
        bins, batch, count = self.num_bins, pred.shape[:-1], pred.shape[-1]
        pred = pred.reshape(-1, count)
        (pred_low, pred_upper), (target_low, target_upper) = (self._bins(values.float()) for values in (pred, target))
        # each sample of the batch scatters into its own histogram
        offsets = (torch.arange(pred.shape[0], device=pred.device) * bins * bins)[:, None]
        if weights is not None:
            weights = weights.reshape(pred.shape).float()
            count = weights.sum(1, keepdim=True)
        joint = pred.new_zeros(pred.shape[0] * bins * bins, dtype=torch.float32)
        for target_side, target_weight in ((0, 1 - target_upper), (1, target_upper)):
            for pred_side, pred_weight in ((0, 1 - pred_upper), (1, pred_upper)):
                weight = target_weight * pred_weight if weights is None else target_weight * pred_weight * weights
                joint.index_add_(0, (offsets + (target_low + target_side) * bins + pred_low + pred_side).flatten(), weight.flatten())
        joint = joint.view(-1, bins, bins) / (count if weights is None else count[..., None])
        eps = torch.finfo(joint.dtype).tiny
        log_ratio = torch.log(joint + eps) - torch.log(joint.sum(2, keepdim=True) * joint.sum(1, keepdim=True) + eps)
        information = (joint * log_ratio).sum((1, 2))
        # d(pred's weight in its upper bin) / d pred is bins - 1, in its lower bin the opposite; 0 where clipped
        table = log_ratio.flatten()
        slope = sum(
            weight * (table[offsets + (target_low + side) * bins + pred_low + 1] - table[offsets + (target_low + side) * bins + pred_low])
            for side, weight in ((0, 1 - target_upper), (1, target_upper))
        )
        inside = ((pred >= 0) & (pred <= 1)).float()
        if weights is not None:
            inside = inside * weights
        return -information.view(batch), (-slope * inside * (bins - 1) / count).view(*batch, -1)

    def _bins(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lower of the two bins of each of ``(K,)`` values and the weight of the upper one (``_weights``' two non-zeros)."""
        position = values.clamp(0.0, 1.0) * (self.num_bins - 1)
        low = position.floor().clamp(max=self.num_bins - 2)
        return low.long(), position - low
