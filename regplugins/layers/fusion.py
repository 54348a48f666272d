"""Fusion of two displacement fields predicted by separate branches (the gradient-guided fusion paper, Sec. 2.2.3)."""

from __future__ import annotations

import torch
from monai.networks.layers import Conv
from torch import nn


class GatedFusion(nn.Module):
    """Fuse two fields ``(B, C, *spatial)`` voxel by voxel, with learned gates or by their average.

    ``mode="gated"`` is the paper's gated dual-branch fusion: a ``2C``-channel convolution with a
    sigmoid on the concatenated fields gives gates in [0, 1], split into one ``C``-channel gate
    per field; each field is multiplied by its gate, and a 1x1x1 convolution maps the two
    re-weighted fields back to ``C`` channels. ``mode="average"`` is the hard-coded average the
    paper compares it with, and has no parameters.

    The gated module starts as the average (gates at 0.5, the 1x1x1 convolution adding the two
    halves channel by channel), so training starts from the baseline and only learns where to
    trust one branch more than the other, rather than first undoing a random mixing of the
    displacement components.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of each field (``spatial_dims`` for displacement fields).
        mode: ``"gated"`` or ``"average"``.
        kernel_size: kernel of the gating convolution (the paper does not give it; 3 sees the
            neighbourhood of each voxel).
    """

    def __init__(self, spatial_dims: int = 3, channels: int = 3, mode: str = "gated", kernel_size: int = 3):
        super().__init__()
        if mode not in ("gated", "average"):
            raise ValueError(f'mode must be "gated" or "average", got "{mode}".')
        self.mode = mode
        if mode == "gated":
            conv = Conv[Conv.CONV, spatial_dims]
            self.gate = conv(2 * channels, 2 * channels, kernel_size=kernel_size, padding=kernel_size // 2)
            self.bottleneck = conv(2 * channels, channels, kernel_size=1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
            with torch.no_grad():
                identity = torch.eye(channels)
                self.bottleneck.weight.copy_(torch.cat([identity, identity], dim=1).view(self.bottleneck.weight.shape))
            nn.init.zeros_(self.bottleneck.bias)

    def gates(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two gate maps, each shaped like its field, with values in [0, 1]."""
        return torch.sigmoid(self.gate(torch.cat([first, second], dim=1))).chunk(2, dim=1)

    def fuse(self, first: torch.Tensor, second: torch.Tensor, first_gate: torch.Tensor, second_gate: torch.Tensor) -> torch.Tensor:
        """Re-weight each field by its gate, concatenate, and map back to one field by the 1x1x1 convolution."""
        return self.bottleneck(torch.cat([first * first_gate, second * second_gate], dim=1))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if self.mode == "average":
            return 0.5 * (first + second)
        return self.fuse(first, second, *self.gates(first, second))
