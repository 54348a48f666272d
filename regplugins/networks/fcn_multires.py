"""The multi-resolution FCN with deep self-supervision (Li and Fan, "Non-rigid image registration
using fully convolutional networks with deep self-supervision", 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv, Pool
from torch import nn


class MultiResolutionFCN(nn.Module):
    """Predicts a voxel DDF at 1/4, 1/2 and full resolution from a concatenated (moving, fixed) pair.

    Conv 1-3 (32, 64, 128 kernels) with two max-poolings between them; regression head 1 reads
    conv 3 (1/4 resolution). Deconv 1 (64) brings the features to 1/2 resolution, conv 4 (64)
    merges them with conv 2 and feeds head 2; deconv 2 (32) brings them to full resolution, where
    head 3 reads them together with conv 1. The paper's figure is the only source for where conv 4
    and the merges sit; the skip merges follow the FCN it builds on and can be switched off.

    ``variant`` picks the paper's comparison networks as well: ``"no_pooling"`` keeps conv 1-3 at
    full resolution with one regression head, and ``"coarse"`` predicts at 1/4 resolution (head 1)
    and upsamples the field trilinearly; both have a single loss.

    In training mode the forward pass returns the fields finest first (three for
    ``"multires"``, one otherwise), for :class:`regplugins.losses.MultiResolutionRegistrationLoss`;
    in eval mode it returns only the full-resolution field, one tensor, as the bundle contract
    asks. Spatial sizes must be divisible by 4.
    """

    VARIANTS = ("multires", "no_pooling", "coarse")

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        encoder_channels: tuple[int, int, int] = (32, 64, 128),
        conv4_channels: int = 64,
        decoder_channels: tuple[int, int] = (64, 32),
        skip_connections: bool = True,
        variant: str = "multires",
    ):
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}.")
        self.spatial_dims, self.skip_connections, self.variant = spatial_dims, skip_connections, variant
        c1, c2, c3 = encoder_channels
        d1, d2 = decoder_channels

        def conv(cin: int, cout: int) -> Convolution:
            return Convolution(spatial_dims, cin, cout, kernel_size=3, act="RELU", norm="BATCH")

        def deconv(cin: int, cout: int) -> Convolution:
            return Convolution(spatial_dims, cin, cout, strides=2, kernel_size=3, act="RELU", norm="BATCH", is_transposed=True)

        pool = Pool[Pool.MAX, spatial_dims]
        self.conv1, self.conv2, self.conv3 = conv(in_channels, c1), conv(c1, c2), conv(c2, c3)
        if variant == "no_pooling":
            self.heads = nn.ModuleList([self._head(c3)])
            return
        self.pool1, self.pool2 = pool(kernel_size=3, stride=2, padding=1), pool(kernel_size=3, stride=2, padding=1)
        if variant == "coarse":
            self.heads = nn.ModuleList([self._head(c3)])
            return
        self.deconv1 = deconv(c3, d1)
        self.conv4 = conv(d1 + (c2 if skip_connections else 0), conv4_channels)
        self.deconv2 = deconv(conv4_channels, d2)
        self.heads = nn.ModuleList([self._head(c) for c in (d2 + (c1 if skip_connections else 0), conv4_channels, c3)])

    def _head(self, channels: int) -> nn.Module:
        head = Conv[Conv.CONV, self.spatial_dims](channels, self.spatial_dims, kernel_size=3, padding=1)
        # start from (almost) the identity transform, as VoxelMorph does
        nn.init.normal_(head.weight, std=1e-5)
        nn.init.zeros_(head.bias)
        return head

    def _merge(self, decoded: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        return torch.cat([decoded, encoded], dim=1) if self.skip_connections else decoded

    def forward(self, pair: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.variant == "no_pooling":
            fields = [self.heads[0](self.conv3(self.conv2(self.conv1(pair))))]
        elif self.variant == "coarse":
            coarse = self.heads[0](self.conv3(self.pool2(self.conv2(self.pool1(self.conv1(pair))))))
            fields = [_upsample_field(coarse, pair.shape[2:])]
        else:
            f1 = self.conv1(pair)
            f2 = self.conv2(self.pool1(f1))
            f3 = self.conv3(self.pool2(f2))
            f4 = self.conv4(self._merge(self.deconv1(f3), f2))
            full = self.heads[0](self._merge(self.deconv2(f4), f1))
            fields = [full, self.heads[1](f4), self.heads[2](f3)]
        return fields if self.training else fields[0]


def _upsample_field(ddf: torch.Tensor, size) -> torch.Tensor:
    """A voxel DDF interpolated (linearly) to a finer grid, its values rescaled to the finer voxels."""
    mode = "bilinear" if ddf.dim() == 4 else "trilinear"
    scale = torch.tensor([s / c for s, c in zip(size, ddf.shape[2:])], dtype=ddf.dtype, device=ddf.device)
    upsampled = F.interpolate(ddf, size=tuple(size), mode=mode, align_corners=False)
    return upsampled * scale.view(1, -1, *([1] * (ddf.dim() - 2)))
