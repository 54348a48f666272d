"""The loss of the gradient-guided dual-branch registration network (its eq. 2), unsupervised."""

from __future__ import annotations

import torch
from monai.losses import DiffusionLoss
from torch import nn
from torch.nn.modules.loss import _Loss

from regplugins.layers import GradientMagnitude, cached_warp

from .mind import MINDLoss


class GradientFusionLoss(_Loss):
    """``alpha S(m o phi_ig, f) + beta S(G(m) o phi_g, G(f)) + gamma_1 R(phi_ig) + gamma_2 R(phi_g)``.

    ``m`` and ``f`` are the moving and the fixed image, ``G`` their gradient maps. The second term
    aligns the gradient maps by the gradient branch's own field, which is what makes that branch
    learn boundaries; the first judges the fused field on the images themselves. ``S`` is MIND
    by default, ``R`` the mean squared spatial gradient of the field (eq. 3): MONAI's
    :class:`~monai.losses.DiffusionLoss`, which sums the squared derivatives along the axes, divided
    by the number of axes as in VoxelMorph's ``Grad("l2")``, the code the paper built on, so that the
    paper's gammas weigh it as they did there (undivided, they weigh it three times as much in 3D).

    ``forward(fields, pair)``: ``fields`` is ``(phi_ig, phi_g)`` from
    :class:`regplugins.networks.GradientFusionNet` in training mode, or one field (the VoxelMorph
    baseline, which only has the first and third terms); ``pair`` is the network input
    ``(B, 2, *spatial)``, moving in channel 0 and fixed in channel 1. Fields are voxel DDFs.

    The defaults are the paper's weights for its abdomen CT-MR data (alpha, beta, gamma = 0.5,
    1, 0.5, one gamma for both fields); for its pig-kidney data it used 0.4, 0.8, 0.3.

    Args:
        spatial_dims: number of spatial dimensions.
        image_weight: alpha.
        gradient_weight: beta.
        fused_smoothness_weight: gamma_1, on ``phi_ig``.
        gradient_smoothness_weight: gamma_2, on ``phi_g``.
        similarity: a loss ``(warped, fixed) -> scalar``, lower is better; the paper's MIND (eq. 4) when None.
        gradient_difference: finite difference of the gradient maps, as in the network.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        image_weight: float = 0.5,
        gradient_weight: float = 1.0,
        fused_smoothness_weight: float = 0.5,
        gradient_smoothness_weight: float = 0.5,
        similarity: nn.Module | None = None,
        gradient_difference: str = "central",
    ):
        super().__init__()
        self.image_weight, self.gradient_weight = image_weight, gradient_weight
        self.fused_smoothness_weight, self.gradient_smoothness_weight = fused_smoothness_weight, gradient_smoothness_weight
        self.similarity = similarity if similarity is not None else MINDLoss(spatial_dims=spatial_dims, descriptor="mind")
        self.diffusion, self.spatial_dims = DiffusionLoss(), spatial_dims
        self.gradient = GradientMagnitude(spatial_dims, difference=gradient_difference)

    def smoothness(self, field: torch.Tensor) -> torch.Tensor:
        """``R``: the mean squared spatial gradient, averaged over the axes (VoxelMorph's normalisation)."""
        return self.diffusion(field) / self.spatial_dims

    def terms(self, fields: torch.Tensor | tuple[torch.Tensor, torch.Tensor], pair: torch.Tensor) -> list[torch.Tensor]:
        """The weighted terms: image similarity, fused smoothness, then (two fields given) gradient-map
        similarity and gradient-branch smoothness; their sum is the loss, each on its own shows what drives it."""
        fused, gradient_field = (fields, None) if isinstance(fields, torch.Tensor) else fields
        warp = cached_warp()
        terms = [self.image_weight * self.similarity(warp(pair[:, :1], fused), pair[:, 1:2]), self.fused_smoothness_weight * self.smoothness(fused)]
        if gradient_field is not None:
            maps = self.gradient(pair)
            terms.append(self.gradient_weight * self.similarity(warp(maps[:, :1], gradient_field), maps[:, 1:2]))
            terms.append(self.gradient_smoothness_weight * self.smoothness(gradient_field))
        return terms

    def forward(self, fields: torch.Tensor | tuple[torch.Tensor, torch.Tensor], pair: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(fields, pair))
