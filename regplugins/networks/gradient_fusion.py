"""The dual-branch image and gradient-map registration network with gated fusion (Xu et al., "Unsupervised
multimodal image registration with adaptative gradient guidance", ICASSP 2021, arXiv:2011.06216)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import VoxelMorphUNet
from torch import nn

from regplugins.layers import GatedFusion, GradientMagnitude

FUSION_MODES = ("gated", "average", "none")


def voxelmorph_branch(spatial_dims: int, in_channels: int, channels: Sequence[int], final_conv_channels: Sequence[int]) -> VoxelMorphUNet:
    """One branch of the paper: MONAI's VoxelMorph U-Net with stride-2 convolutions instead of max-pooling.

    The last convolution starts near zero (weights N(0, 1e-5), zero bias), as in VoxelMorph, so
    an untrained branch predicts (almost) the identity transform.
    """
    branch = VoxelMorphUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        unet_out_channels=channels[1],
        channels=channels,
        final_conv_channels=final_conv_channels,
        use_maxpool=False,
    )
    out = branch.net[-1].final_conv_out.conv
    nn.init.normal_(out.weight, std=1e-5)
    nn.init.zeros_(out.bias)
    return branch


class GradientFusionNet(nn.Module):
    """Predicts a voxel DDF from a concatenated (moving, fixed) pair through an image and a gradient-map branch.

    The image branch registers the pair itself (field ``phi_i``); the gradient branch registers
    the gradient intensity maps of the two images (eq. 1, computed inside by a fixed convolution;
    field ``phi_g``), which show organ boundaries in both modalities alike. :class:`GatedFusion`
    fuses the two into ``phi_ig``, the field that warps the moving image.

    In eval mode the forward pass returns ``phi_ig`` alone, one tensor, as the bundle contract
    asks; in training mode it returns ``(phi_ig, phi_g)`` for
    :class:`regplugins.losses.GradientFusionLoss`, which also aligns the gradient maps by
    ``phi_g``. With ``fusion="none"`` only the image branch is built and its field is returned in
    both modes: the paper's VoxelMorph baseline.

    Each branch is a VoxelMorph U-Net: four stride-2 3x3x3 convolutions down, 32-filter
    convolutions and four upsamplings up with skip connections, then refinement convolutions
    to the field (``channels`` and ``final_conv_channels`` as in :class:`monai.networks.nets.VoxelMorphUNet`).
    Spatial sizes must be divisible by 16.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the concatenated pair (moving first).
        fusion: ``"gated"`` (the paper's method), ``"average"`` (its ablation) or ``"none"`` (VM baseline).
        channels: encoder/decoder channels of each branch, in pairs, per level.
        final_conv_channels: the refinement convolutions before the output convolution.
        gradient_difference: finite difference of the gradient maps, see :class:`GradientMagnitude`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        fusion: str = "gated",
        channels: Sequence[int] = (16, 32, 32, 32, 32, 32, 32, 32),
        final_conv_channels: Sequence[int] = (16, 16, 16),
        gradient_difference: str = "central",
    ):
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
        self.fusion_mode = fusion
        self.divisor = 2 ** (len(channels) // 2)
        self.image_branch = voxelmorph_branch(spatial_dims, in_channels, channels, final_conv_channels)
        if fusion != "none":
            self.gradient = GradientMagnitude(spatial_dims, difference=gradient_difference)
            self.gradient_branch = voxelmorph_branch(spatial_dims, in_channels, channels, final_conv_channels)
            self.fusion = GatedFusion(spatial_dims, channels=spatial_dims, mode=fusion)

    def forward(self, pair: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # a constant check under tracing, so exported models skip it
        if not torch.jit.is_tracing() and any(s % self.divisor for s in pair.shape[2:]):
            raise ValueError(f"spatial sizes must be divisible by {self.divisor}, got {tuple(pair.shape[2:])}.")
        image_field = self.image_branch(pair)
        if self.fusion_mode == "none":
            return image_field
        gradient_field = self.gradient_branch(self.gradient(pair))
        fused = self.fusion(image_field, gradient_field)
        return (fused, gradient_field) if self.training else fused
