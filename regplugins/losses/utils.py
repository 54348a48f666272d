"""Reduction shared by the losses that compute one value per sample."""

import torch


def reduce_per_sample(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a ``(B,)`` tensor the way ``torch.nn`` losses do (``mean``, ``sum`` or ``none``)."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f'reduction must be "mean", "sum" or "none", got "{reduction}".')
