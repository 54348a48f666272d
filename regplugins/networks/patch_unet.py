"""The patch U-Net of the paired-data CT/MR registration paper (Cao et al., "Deep learning based inter-modality
image registration supervised by intra-modality similarity", MLMI 2018, doi:10.1007/978-3-030-00919-9_7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Norm, Pool
from torch import nn


def _valid_convolutions(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """Two unpadded 3x3x3 convolutions, each followed by batch norm and ReLU (each loses one voxel per side)."""
    conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
    layers = []
    for channels_in in (in_channels, out_channels):
        layers += [conv(channels_in, out_channels, kernel_size=3, padding=0), norm(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _center_crop(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    starts = [(s - t) // 2 for s, t in zip(image.shape[2:], size)]
    return image[(slice(None), slice(None), *(slice(a, a + t) for a, t in zip(starts, size)))]


class PatchRegistrationUNet(nn.Module):
    """Predicts the voxel DDF of the centre of a (moving, fixed) patch: 68^3 in, 28^3 out (the paper's Fig. 2-3).

    A U-Net with two max-pooling downsamplings and two transposed-convolution upsamplings; every
    3x3x3 convolution is unpadded and followed by batch norm and ReLU, skip connections are
    centre-cropped to the decoder's size, and a final 1x1x1 convolution without activation gives
    the field, which may be negative. Without padding, every output voxel sees the same
    40-voxel context, so tiling output patches over an image (:class:`regplugins.inferers.ValidPatchInferer`)
    gives the field a network on the whole image would.

    The output is ``2 * margin`` (40) voxels smaller than the input along every axis; an input
    size works when it is a multiple of ``size_multiple`` (4, from the two poolings) and at least
    44 (68 gives 28).

    The paper gives the layer layout but not the channel counts; ``channels`` per level default
    to 16, 32, 64, which keeps whole-image inference within seconds on a CPU. The last
    convolution starts near zero, so an untrained network predicts almost the identity.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the concatenated pair (moving first).
        channels: feature channels of the three levels, finest first.
    """

    margin = 20
    size_multiple = 4

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must give the three levels' feature counts, got {tuple(channels)}.")
        c1, c2, c3 = channels
        pool, up, conv = Pool[Pool.MAX, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims], Conv[Conv.CONV, spatial_dims]
        self.encode1 = _valid_convolutions(spatial_dims, in_channels, c1)
        self.encode2 = nn.Sequential(pool(2), _valid_convolutions(spatial_dims, c1, c2))
        self.bottom = nn.Sequential(pool(2), _valid_convolutions(spatial_dims, c2, c3))
        self.up2 = up(c3, c2, kernel_size=2, stride=2)
        self.decode2 = _valid_convolutions(spatial_dims, 2 * c2, c2)
        self.up1 = up(c2, c1, kernel_size=2, stride=2)
        self.decode1 = _valid_convolutions(spatial_dims, 2 * c1, c1)
        self.field = conv(c1, spatial_dims, kernel_size=1)
        nn.init.normal_(self.field.weight, std=1e-5)
        nn.init.zeros_(self.field.bias)

    @classmethod
    def output_size(cls, input_size: int) -> int:
        return input_size - 2 * cls.margin

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        # a constant check under tracing, so exported models skip it
        smallest = 2 * self.margin + self.size_multiple
        if not torch.jit.is_tracing() and any(s % self.size_multiple or s < smallest for s in pair.shape[2:]):
            raise ValueError(f"patch sizes must be multiples of {self.size_multiple} and at least {smallest}, got {tuple(pair.shape[2:])}.")
        skip1 = self.encode1(pair)
        skip2 = self.encode2(skip1)
        x = self.up2(self.bottom(skip2))
        x = self.decode2(torch.cat([_center_crop(skip2, x.shape[2:]), x], dim=1))
        x = self.up1(x)
        x = self.decode1(torch.cat([_center_crop(skip1, x.shape[2:]), x], dim=1))
        return self.field(x)
