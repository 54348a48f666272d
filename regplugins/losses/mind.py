"""MIND, the modality independent neighbourhood descriptor, and its self-similarity-context form.

Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal deformable
registration", MedIA 2012 (MIND), and "Towards realtime multimodal fusion for image-guided
interventions using self-similarities", MICCAI 2013 (MIND-SSC). MONAI has no MIND, so it lives here.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from regplugins.layers import gaussian_smooth

from .utils import reduce_per_sample

DESCRIPTORS = ("mind", "mind_ssc")


def _box_mean(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2 radius + 1)``-voxel box around each voxel of ``(B, C, *spatial)``, edges replicated.

    The result of replicate padding and ``avg_pool3d``, axis by axis as sums of shifted copies
    without padded copies: pooling a 12-channel 128^3 volume took 0.17 s on a CPU, this 0.05 s.
    """
    for axis in range(2, volume.dim()):
        length = volume.shape[axis]
        total = volume.clone()
        for shift in range(1, min(radius, length - 1) + 1):
            total.narrow(axis, shift, length - shift).add_(volume.narrow(axis, 0, length - shift))
            total.narrow(axis, 0, length - shift).add_(volume.narrow(axis, shift, length - shift))
        for shift in range(1, radius + 1):  # the replicated edges: voxels nearer than ``shift`` to an end
            near = min(shift, length)
            total.narrow(axis, 0, near).add_(volume.narrow(axis, 0, 1))
            total.narrow(axis, length - near, near).add_(volume.narrow(axis, length - 1, 1))
        volume = total
    return volume / (2 * radius + 1) ** (volume.dim() - 2)


class MINDDescriptor(nn.Module):
    """MIND or MIND-SSC descriptor of ``(B, C, *spatial)``: ``(B, C * P, *spatial)``.

    Each channel is the distance between two image patches (box patches of half-width ``radius``)
    near a voxel, turned into a similarity by ``exp(-D / V)`` with ``V`` the mean distance over
    the channels, then scaled so the largest channel is 1. Contrast differences between
    modalities change ``D`` and ``V`` together, which is why the descriptor is comparable across
    them. ``descriptor`` says which patches are compared, with the 2N neighbours at ``dilation``
    voxels along each axis:

    - ``"mind"`` (2012): the voxel's own patch with each neighbour's, P = 6 in 3D and 4 in 2D;
    - ``"mind_ssc"`` (2013): the neighbours' patches with each other, in pairs that lie on
      different axes, P = 12 in 3D and 4 in 2D. The voxel's own patch, noise included, enters
      no channel, and each channel's distance is taken relative to the smallest.

    ``V`` is kept above ``variance_floor`` times its mean over the image. Where an image has no
    structure (air, the inside of a tissue) ``V`` is the noise's, and ``exp(-D / V)`` turns that
    noise into descriptors as varied as an edge's; the floor makes them flat instead. 0.001 is
    the MIND authors' code's; the descriptors of noise then still reward any warp that blurs it.
    """

    def __init__(self, spatial_dims: int = 3, radius: int = 1, dilation: int = 2, descriptor: str = "mind_ssc", variance_floor: float = 0.001):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"MIND is defined for 2D and 3D images, got spatial_dims={spatial_dims}.")
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {descriptor!r}.")
        self.spatial_dims, self.radius, self.dilation = spatial_dims, radius, dilation
        self.variance_floor = variance_floor
        self.self_similarity_context = descriptor == "mind_ssc"
        neighbours = []
        for axis in range(spatial_dims):
            for sign in (-1, 1):
                offset = [0] * spatial_dims
                offset[axis] = sign * dilation
                neighbours.append((axis, tuple(offset)))
        if self.self_similarity_context:
            self.pairs = [(p, q) for (ap, p), (aq, q) in itertools.combinations(neighbours, 2) if ap != aq]
        else:
            self.pairs = [((0,) * spatial_dims, q) for _, q in neighbours]
        # (I(x+p) - I(x+q))^2 is S_d(x+p) with S_d(y) = (I(y) - I(y+d))^2 and d = q - p, or S_-d(x+q): MIND-SSC's
        # 12 channels are shifted copies of 6 such maps (MIND's 6 of 3), each box-filtered once
        self.offsets: list[tuple[int, ...]] = []
        self.channels: list[tuple[int, tuple[int, ...]]] = []  # (which offset, where the copy starts)
        for p, q in self.pairs:
            d = tuple(b - a for a, b in zip(p, q))
            negative = tuple(-v for v in d)
            if negative in self.offsets:
                self.channels.append((self.offsets.index(negative), q))
            else:
                if d not in self.offsets:
                    self.offsets.append(d)
                self.channels.append((self.offsets.index(d), p))

    def _distances(self, image: torch.Tensor) -> torch.Tensor:
        """The patch distances ``(B, P, *spatial)`` of ``(B, 1, *spatial)``, edges replicated."""
        shape = image.shape[2:]
        margin = self.dilation + self.radius
        padded = F.pad(image, [margin] * (2 * self.spatial_dims), mode="replicate")
        maps = []
        for d in self.offsets:
            low = [max(0, -v) for v in d]
            length = [n + 2 * margin - abs(v) for n, v in zip(shape, d)]
            here = padded[(..., *(slice(a, a + n) for a, n in zip(low, length)))]
            there = padded[(..., *(slice(a + v, a + v + n) for a, v, n in zip(low, d, length)))]
            squared = (here - there) ** 2
            maps.append((_box_mean(squared, self.radius) if self.radius > 0 else squared, low))
        copies = []
        for index, start in self.channels:
            distance, low = maps[index]
            copies.append(distance[(..., *(slice(margin + s - a, margin + s - a + n) for s, a, n in zip(start, low, shape)))])
        return torch.cat(copies, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch, channels, *shape = image.shape
        distance = self._distances(image.reshape(batch * channels, 1, *shape))
        if self.self_similarity_context:
            distance = distance - distance.amin(dim=1, keepdim=True)
        variance = distance.mean(dim=1, keepdim=True)
        mean_variance = variance.mean(dim=list(range(1, variance.dim())), keepdim=True)
        variance = torch.maximum(torch.minimum(variance, mean_variance * 1000.0), mean_variance * self.variance_floor + 1e-8)
        if torch.is_grad_enabled() and distance.requires_grad:
            descriptor = torch.exp(distance / -variance)
            descriptor = descriptor / descriptor.amax(dim=1, keepdim=True)
        else:  # in place, half the time of the features of a 128^3 image in the refinement
            descriptor = distance.div_(variance).neg_().exp_()
            descriptor = descriptor.div_(descriptor.amax(dim=1, keepdim=True))
        return descriptor.reshape(batch, channels * len(self.pairs), *shape)


class MINDLoss(_Loss):
    """Mean squared difference of the MIND descriptors of the warped and the fixed image.

    ``forward(pred, target)``: ``pred`` is the warped moving image, ``target`` the fixed image,
    both ``(B, 1, *spatial)``. Lower is better; zero for identical structure whatever the contrast.
    ``descriptor``, ``radius``, ``dilation`` and ``variance_floor`` are :class:`MINDDescriptor`'s.

    ``smoothing_sigma`` smooths both images with a Gaussian of that many voxels before their
    descriptors are taken. Warping by a sub-voxel field interpolates, which blurs the moving
    image and removes noise from it; on noisy images that lowers MIND as much as aligning them
    does, so a network can learn to blur instead of to register. Smoothing both images first
    takes that reward away (measured in the gradient-fusion bundle's training record,
    docs/experiments/ct_mr_gradient_fusion_reg.md). 0 leaves the images as they are, as the MIND
    papers do.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        radius: int = 1,
        dilation: int = 2,
        smoothing_sigma: float = 0.0,
        descriptor: str = "mind_ssc",
        variance_floor: float = 0.001,
        reduction: str = "mean",
    ):
        super().__init__(reduction=reduction)
        self.descriptor = MINDDescriptor(
            spatial_dims=spatial_dims, radius=radius, dilation=dilation, descriptor=descriptor, variance_floor=variance_floor
        )
        self.smoothing = [float(smoothing_sigma)] * spatial_dims

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}.")
        pred, target = gaussian_smooth(pred, self.smoothing), gaussian_smooth(target, self.smoothing)
        squared = (self.descriptor(pred) - self.descriptor(target)) ** 2
        per_sample = squared.flatten(1).mean(dim=1)
        return reduce_per_sample(per_sample, self.reduction)
