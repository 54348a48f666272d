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


def prepare_paired_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``(inputs, targets)`` for training on paired data (:class:`regplugins.losses.IntraModalitySimilarityLoss`).

    ``image`` holds four channels: moving, fixed, the moving anatomy in the fixed modality and
    the fixed anatomy in the moving modality. The network sees the first two; the loss gets all
    four with ``fixed_is_ct``, from the batch's ``fixed_modality`` names, which says which of its
    terms is the CT one.
    """
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    fixed_is_ct = torch.tensor([str(name).lower() == "ct" for name in batchdata["fixed_modality"]], device=device)
    return image[:, :2], {"images": image, "fixed_is_ct": fixed_is_ct}
