"""The loss of the paired-data CT/MR paper (Cao et al., MLMI 2018): inter-modality registration judged by intra-modality NCC."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from regplugins.layers import cached_warp

from .ncc import GlobalNCCLoss
from .regularization import LaplacianRegularizationLoss


class IntraModalitySimilarityLoss(_Loss):
    """``w_CT (1 - NCC(I_CT, phi . I'_CT)) + w_MR (1 - NCC(I'_MR, phi . I_MR)) + l1 ||lap phi||^2 + l2 ||phi||^2`` (eq. 2-4).

    Registering a moving image to a fixed image of the other modality, the paper compares images
    of one modality only: the fixed image with the warped paired image of the moving anatomy in
    the fixed modality, and the paired image of the fixed anatomy in the moving modality with the
    warped moving image. Either may be the CT; ``fixed_is_ct`` says which, per sample, so that
    ``ct_weight`` and ``mr_weight`` weigh the CT and the MR term as in the paper. The paper's
    dual loss is 0.5/0.5; its single-modality variants are 1/0 (CT only) and 0/1 (MR only).

    ``forward(ddf, target)``: ``ddf`` is the voxel field of the centre of the input patch
    (``margin`` voxels smaller per side, as :class:`regplugins.networks.PatchRegistrationUNet`
    gives; 0 for same-size fields); ``target`` is a dict with ``images`` ``(B, 4, *patch)``:
    moving, fixed, the moving anatomy in the fixed modality, the fixed anatomy in the moving
    modality; and ``fixed_is_ct`` ``(B,)``. The moving images are warped on the whole input patch
    (the context the field may point into) and compared on its centre.

    Args:
        ct_weight, mr_weight: weights of the CT-modality and MR-modality NCC terms.
        laplacian_weight, magnitude_weight: l1 and l2 of eq. 4 (0.5 and 0.01 in the paper).
    """

    def __init__(self, ct_weight: float = 0.5, mr_weight: float = 0.5, laplacian_weight: float = 0.5, magnitude_weight: float = 0.01):
        super().__init__()
        if ct_weight < 0 or mr_weight < 0 or ct_weight + mr_weight == 0:
            raise ValueError(f"ct_weight and mr_weight must be non-negative, not both 0; got {ct_weight}, {mr_weight}.")
        self.ct_weight, self.mr_weight = ct_weight, mr_weight
        self.ncc = GlobalNCCLoss(reduction="none")
        self.regularization = LaplacianRegularizationLoss(l1=laplacian_weight, l2=magnitude_weight)

    def forward(self, ddf: torch.Tensor, target: dict) -> torch.Tensor:
        images, fixed_is_ct = target["images"], target["fixed_is_ct"].to(ddf.device).bool().flatten()
        margins = [(i - f) // 2 for i, f in zip(images.shape[2:], ddf.shape[2:])]
        if any(m < 0 or 2 * m + f != i for m, f, i in zip(margins, ddf.shape[2:], images.shape[2:])):
            raise ValueError(f"the field {tuple(ddf.shape[2:])} must be the centre of the patch {tuple(images.shape[2:])}.")
        pad = [m for margin in reversed(margins) for m in (margin, margin)]
        warped = cached_warp()(images[:, [0, 2]], F.pad(ddf, pad))
        center = (..., *(slice(m, m + f) for m, f in zip(margins, ddf.shape[2:])))
        warped, images = warped[center], images[center]
        fixed_modality_term = self.ncc(warped[:, 1:2], images[:, 1:2])  # fixed vs warped moving anatomy, fixed modality
        moving_modality_term = self.ncc(warped[:, 0:1], images[:, 3:4])  # warped moving vs fixed anatomy, moving modality
        ct, mr = self.ct_weight, self.mr_weight
        fixed_weight = torch.where(fixed_is_ct, ct, mr).to(ddf.dtype)
        moving_weight = torch.where(fixed_is_ct, mr, ct).to(ddf.dtype)
        similarity = (fixed_weight * fixed_modality_term + moving_weight * moving_modality_term).mean()
        return similarity + self.regularization(ddf)
