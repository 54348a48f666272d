"""Pieces of ignite engines for registration."""

from __future__ import annotations

import torch


def prepare_registration_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``(inputs, targets)`` for unsupervised registration: the concatenated pair is both.

    The loss compares the moving channel warped by the predicted fields with the fixed channel,
    so the pair itself is the target; pass this as ``prepare_batch`` of MONAI's trainers.
    """
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, image
