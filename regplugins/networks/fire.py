"""FIRE: synthesis-based inverse-consistent affine and non-rigid registration (Wang et al., "FIRE: Unsupervised
bi-directional inter-modality registration using deep networks", arXiv:1907.05062).

Five sub-networks: a synthesis encoder ``G`` shared by both images, two synthesis decoders
``F_ab`` and ``F_ba``, and two transformation networks ``T_ab`` and ``T_ba``, each an affine
sub-network and a non-rigid one. ``A`` is the moving image (channel 0 of the pair) and ``B``
the fixed one, so ``phi_ab`` is the field that brings ``A`` onto ``B`` (a pull field on ``B``'s
grid: the contract's ``ddf``) and ``phi_ba`` its inverse.

Fields are handled in normalised coordinates (:mod:`regplugins.layers.normalised`), as the
paper's Tanh output asks: one field warps the images and the quarter-resolution feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from regplugins.layers import (
    fit_affine_to_points,
    in_float32,
    normalized_affine_flow,
    normalized_grid,
    normalized_to_voxel,
    resize_normalized,
    round_trip,
    soft_argmax_points,
    warp_normalized,
)

__all__ = [
    "SynthesisEncoder",
    "SynthesisDecoder",
    "AffineNetwork",
    "KeypointAffineNetwork",
    "AFFINE_HEADS",
    "NonRigidNetwork",
    "TransformationNetwork",
    "FIRENet",
]


def _conv(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> Convolution:
    """3-wide convolution followed by instance norm and ReLU, the paper's unit."""
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm="instance", act="relu", **kwargs)


def _res_blocks(spatial_dims: int, channels: int, num_blocks: int) -> list[nn.Module]:
    return [ResidualUnit(spatial_dims, channels, channels, subunits=2, act="relu", norm="instance") for _ in range(num_blocks)]


@in_float32
def compose_affine_nonrigid(theta: torch.Tensor, nonrigid: torch.Tensor) -> torch.Tensor:
    """Normalised field of ``phi_af o phi_nr``: ``p -> theta (p + u(p))``, the affine applied after the non-rigid field.

    The non-rigid network aligns the affinely warped features ``G(x_A) o phi_af`` with ``G(x_B)``,
    so a point of ``B`` first moves by ``u`` and then through the affine into ``A``.
    """
    n = nonrigid.shape[1]
    shape = nonrigid.shape[2:]
    return normalized_affine_flow(theta, shape) + torch.einsum("bij,bj...->bi...", theta[:, :, :n], nonrigid)


class SynthesisEncoder(nn.Sequential):
    """``G``: an input convolution, two stride-2 convolutions and four ResNet blocks, kernel 3 and instance norm.

    Maps an image to modality-independent features at a quarter of its resolution.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), num_res_blocks: int = 4):
        first, middle, last = channels
        super().__init__(
            _conv(spatial_dims, in_channels, first),
            _conv(spatial_dims, first, middle, strides=2),
            _conv(spatial_dims, middle, last, strides=2),
            *_res_blocks(spatial_dims, last, num_res_blocks),
        )


class SynthesisDecoder(nn.Sequential):
    """``F``: four ResNet blocks, two stride-2 transposed convolutions and an output convolution to an image in [-1, 1]."""

    def __init__(self, spatial_dims: int = 3, out_channels: int = 1, channels: Sequence[int] = (16, 32, 64), num_res_blocks: int = 4):
        first, middle, last = channels
        super().__init__(
            *_res_blocks(spatial_dims, last, num_res_blocks),
            _conv(spatial_dims, last, middle, strides=2, is_transposed=True),
            _conv(spatial_dims, middle, first, strides=2, is_transposed=True),
            Convolution(spatial_dims, first, out_channels, kernel_size=3, conv_only=True),
            nn.Tanh(),
        )


class AffineNetwork(nn.Module):
    """``T_af``: STN-like: strided convolutions on both feature maps, global average pooling, two fully connected layers.

    Returns affines ``(B, N, N + 1)`` acting on normalised points; the last layer starts at zero
    weights and the identity as bias, so an untrained network predicts the identity.
    """

    def __init__(self, spatial_dims: int, feature_channels: int, channels: int = 32, hidden: int = 64):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.features = nn.Sequential(
            _conv(spatial_dims, 2 * feature_channels, channels, strides=2), _conv(spatial_dims, channels, 2 * channels, strides=2)
        )
        # leaky: the pooled features barely differ between pairs, so one bias step can silence every ReLU unit
        # at once (all 64 did in a 3D CPU run), leaving an affine that no longer depends on its input
        self.fully_connected = nn.Sequential(nn.Linear(2 * channels, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, spatial_dims * (spatial_dims + 1)))
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Predict the identity for every pair again: trained weights then start where a pre-alignment left the pair."""
        nn.init.zeros_(self.fully_connected[-1].weight)
        self.fully_connected[-1].bias.copy_(torch.eye(self.spatial_dims, self.spatial_dims + 1).flatten())

    def pooled_features(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """``(B, 2 * channels)``: the globally averaged convolution features that the fully connected layers read."""
        return self.features(torch.cat([features_a, features_b], dim=1)).flatten(2).mean(dim=2)

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        # in float32 under mixed precision: bfloat16 rounds a diagonal near 1 to steps of 2^-7 (regplugins.layers.precision)
        return in_float32(self.fully_connected)(self.pooled_features(features_a, features_b)).view(-1, self.spatial_dims, self.spatial_dims + 1)


class KeypointAffineNetwork(nn.Module):
    """``T_af`` as a keypoint detector, a departure from the paper: soft-argmax points of each feature map, and the
    affine that takes the fixed image's points onto the moving one's by least squares.

    The paper's STN-like regressor (:class:`AffineNetwork`) learns the translation and next to
    nothing of the rotation or scaling (item 19 of its training record,
    docs/experiments/fire_inverse_consistent_reg.md). Here one detector
    reads both feature maps, which the shared encoder makes modality-independent, and gives one
    heat map per point. Each map is weighted by a Gaussian around its own anchor, the anchors a
    ``keypoints_per_axis``-wide lattice over the image, so that each point looks for a feature
    near its anchor; a convolution's peak moves with the feature under it, so points follow the
    local motion everywhere, and a rotation or scaling is a motion that differs from place to
    place. The detector's last convolution starts at zero: every point at its anchor in both
    images, the identity affine.

    Args:
        spatial_dims: 2 or 3.
        feature_channels: channels of the feature maps.
        channels: the detector's convolution channels (twice as many after its first convolution).
        keypoints_per_axis: anchors along each axis, at ``-0.5``, ..., ``0.5`` in normalised coordinates.
        anchor_width: the Gaussian's standard deviation, in normalised units (1 is half the image).
    """

    def __init__(self, spatial_dims: int, feature_channels: int, channels: int = 32, keypoints_per_axis: int = 3, anchor_width: float = 0.25):
        super().__init__()
        self.detector = nn.Sequential(
            _conv(spatial_dims, feature_channels, channels),
            _conv(spatial_dims, channels, 2 * channels),
            _conv(spatial_dims, 2 * channels, 2 * channels),
            Convolution(spatial_dims, 2 * channels, keypoints_per_axis**spatial_dims, kernel_size=1, conv_only=True),
        )
        nn.init.zeros_(self.detector[-1].conv.weight)
        nn.init.zeros_(self.detector[-1].conv.bias)
        axis = torch.linspace(-0.5, 0.5, keypoints_per_axis)
        anchors = torch.stack(torch.meshgrid(*[axis] * spatial_dims, indexing="ij"), dim=-1).reshape(-1, spatial_dims)
        self.register_buffer("anchors", anchors, persistent=False)
        self.anchor_width = anchor_width

    def points(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K, N)``: the soft-argmax points of the detector's heat maps, each weighted around its anchor."""
        heatmaps = self.detector(features)
        grid = normalized_grid(heatmaps.shape[2:], heatmaps).flatten(1)  # (N, V)
        log_prior = -(grid[None] - self.anchors[..., None]).square().sum(dim=1) / (2 * self.anchor_width**2)  # (K, V)
        return soft_argmax_points(heatmaps + log_prior.view(1, *heatmaps.shape[1:]))

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Affines ``(B, N, N + 1)`` taking points of ``B`` to points of ``A``, as :class:`AffineNetwork`'s."""
        return fit_affine_to_points(self.points(features_b), self.points(features_a))


# the affine sub-networks that ``FIRENet(affine_head=...)`` names
AFFINE_HEADS = {"regression": AffineNetwork, "keypoints": KeypointAffineNetwork}


class NonRigidNetwork(nn.Module):
    """``T_nr``: parallel convolutions on the two feature maps, concatenated, ending in Tanh (a normalised field).

    The output convolution starts near zero, so an untrained network adds (almost) no deformation.
    """

    def __init__(self, spatial_dims: int, feature_channels: int, channels: int = 32):
        super().__init__()
        self.branch_a = nn.Sequential(_conv(spatial_dims, feature_channels, channels), _conv(spatial_dims, channels, channels))
        self.branch_b = nn.Sequential(_conv(spatial_dims, feature_channels, channels), _conv(spatial_dims, channels, channels))
        self.head = nn.Sequential(
            _conv(spatial_dims, 2 * channels, channels), Convolution(spatial_dims, channels, spatial_dims, kernel_size=3, conv_only=True), nn.Tanh()
        )
        out = self.head[1].conv
        nn.init.normal_(out.weight, std=1e-5)
        nn.init.zeros_(out.bias)

    def forward(self, warped_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.branch_a(warped_a), self.branch_b(features_b)], dim=1))


class TransformationNetwork(nn.Module):
    """``T``: the affine sub-network, then the non-rigid one on the affinely warped features; see :class:`FIRENet`."""

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: int,
        channels: int = 32,
        affine_hidden: int = 64,
        affine_head: str = "regression",
        keypoints_per_axis: int = 3,
    ):
        super().__init__()
        if affine_head == "regression":
            self.affine = AffineNetwork(spatial_dims, feature_channels, channels, affine_hidden)
        else:
            self.affine = KeypointAffineNetwork(spatial_dims, feature_channels, channels, keypoints_per_axis)
        self.nonrigid = NonRigidNetwork(spatial_dims, feature_channels, channels)

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Affines ``(B, N, N + 1)`` and the non-rigid normalised field on the feature grid."""
        theta = self.affine(features_a, features_b)
        warped_a = warp_normalized(features_a, normalized_affine_flow(theta, features_a.shape[2:]))
        return theta, self.nonrigid(warped_a, features_b)


class FIRENet(nn.Module):
    """The five FIRE sub-networks; maps a concatenated (moving ``A``, fixed ``B``) pair to the voxel DDF ``phi_ab``.

    In eval mode ``forward`` returns one tensor, the field that warps ``A`` onto ``B`` (the affine
    composed with the non-rigid field, upsampled to the image grid, in voxels), as the bundle
    contract asks; with ``output="affine"`` only its affine part (the paper's FIRE-affine).
    ``forward(pair, with_inverse=True)`` returns ``phi_ab`` and ``phi_ba`` stacked on channels. In training
    mode ``forward`` returns every image, feature map and field that the losses of eq. 2-4 compare
    (:class:`regplugins.losses.FIRELoss`), computed on inputs in [-1, 1].

    Spatial sizes must be multiples of 4 (the encoder's two stride-2 convolutions) and at least 32
    (the affine sub-network normalises its features at 1/16 of the image's resolution).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the concatenated pair, one per image.
        channels: the encoder's channels at full, half and quarter resolution (the decoders mirror them).
        num_res_blocks: ResNet blocks in the encoder and in each decoder.
        transform_channels: convolution channels of the transformation networks.
        affine_hidden: units of the affine sub-network's first fully connected layer.
        affine_head: ``"regression"``, the paper's STN-like affine sub-network (:class:`AffineNetwork`), or
            ``"keypoints"``, a keypoint detector and a least-squares fit (:class:`KeypointAffineNetwork`).
        keypoints_per_axis: anchors along each axis of the ``"keypoints"`` head (27 points in 3D by default).
        output: ``"full"`` or ``"affine"``, which field ``forward`` returns in eval mode.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        num_res_blocks: int = 4,
        transform_channels: int = 32,
        affine_hidden: int = 64,
        affine_head: str = "regression",
        keypoints_per_axis: int = 3,
        output: str = "full",
    ):
        super().__init__()
        if in_channels != 2:
            raise ValueError(f"FIRE registers one image to another: in_channels must be 2, got {in_channels}.")
        if output not in ("full", "affine"):
            raise ValueError(f'output must be "full" or "affine", got {output!r}.')
        if affine_head not in AFFINE_HEADS:
            raise ValueError(f"affine_head must be one of {sorted(AFFINE_HEADS)}, got {affine_head!r}.")
        self.output = output
        self.encoder = SynthesisEncoder(spatial_dims, 1, channels, num_res_blocks)
        self.decoder_ab = SynthesisDecoder(spatial_dims, 1, channels, num_res_blocks)
        self.decoder_ba = SynthesisDecoder(spatial_dims, 1, channels, num_res_blocks)
        transform = (spatial_dims, channels[-1], transform_channels, affine_hidden, affine_head, keypoints_per_axis)
        self.transform_ab = TransformationNetwork(*transform)
        self.transform_ba = TransformationNetwork(*transform)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The paper's three optimisers' parameters: both affine sub-networks, both non-rigid ones, the rest."""
        affine = [*self.transform_ab.affine.parameters(), *self.transform_ba.affine.parameters()]
        nonrigid = [*self.transform_ab.nonrigid.parameters(), *self.transform_ba.nonrigid.parameters()]
        taken = {id(p) for p in affine + nonrigid}
        return {"affine": affine, "nonrigid": nonrigid, "synthesis": [p for p in self.parameters() if id(p) not in taken]}

    def _fields(self, pair: torch.Tensor) -> dict[str, torch.Tensor]:
        if not torch.jit.is_tracing() and any(s % 4 or s < 32 for s in pair.shape[2:]):
            raise ValueError(f"spatial sizes must be multiples of 4 and at least 32, got {tuple(pair.shape[2:])}.")
        shape = pair.shape[2:]
        x_a, x_b = pair[:, :1], pair[:, 1:2]
        g_a, g_b = self.encoder(x_a), self.encoder(x_b)
        out = {"x_a": x_a, "x_b": x_b, "g_a": g_a, "g_b": g_b}
        for direction, transform, (source, target) in (("ab", self.transform_ab, (g_a, g_b)), ("ba", self.transform_ba, (g_b, g_a))):
            theta, nonrigid = transform(source, target)
            out[f"affine_{direction}"] = normalized_affine_flow(theta, shape)
            out[f"nonrigid_{direction}"] = nonrigid
            out[f"flow_{direction}"] = compose_affine_nonrigid(theta, resize_normalized(nonrigid, shape))
        return out

    def forward(self, pair: torch.Tensor, with_inverse: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """The voxel DDF ``phi_ab`` that warps ``A`` onto ``B``; with ``with_inverse``, ``phi_ba`` stacked after it.

        The inverse is asked for through ``forward`` rather than a method of its own so that
        forward hooks (the benchmark's timing) and wrappers such as DistributedDataParallel see it.
        """
        if self.training:
            return self.training_outputs(pair)
        fields = self._fields(pair)
        kind = "affine" if self.output == "affine" else "flow"
        forward = normalized_to_voxel(fields[f"{kind}_ab"])
        return torch.cat([forward, normalized_to_voxel(fields[f"{kind}_ba"])], dim=1) if with_inverse else forward

    def training_outputs(self, pair: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything eq. 2-4 compare, named after the paper's symbols (``syn_b`` is x^_B, ``syn_bt`` is x^_BT)."""
        out = self._fields(pair)
        x_a, x_b, g_a, g_b = out["x_a"], out["x_b"], out["g_a"], out["g_b"]
        out["syn_b"], out["syn_a"] = self.decoder_ab(g_a), self.decoder_ba(g_b)
        out["g_a_warped"], out["g_b_warped"] = warp_normalized(g_a, out["flow_ab"]), warp_normalized(g_b, out["flow_ba"])
        out["syn_bt"], out["syn_at"] = self.decoder_ab(out["g_a_warped"]), self.decoder_ba(out["g_b_warped"])
        out["g_syn_b"], out["g_syn_a"] = self.encoder(out["syn_b"]), self.encoder(out["syn_a"])
        out["cycle_a"], out["cycle_b"] = self.decoder_ba(out["g_syn_b"]), self.decoder_ab(out["g_syn_a"])
        out["x_a_warped"], out["x_b_warped"] = warp_normalized(x_a, out["flow_ab"]), warp_normalized(x_b, out["flow_ba"])
        out["reg_b"], out["reg_a"] = self.decoder_ab(self.encoder(out["x_a_warped"])), self.decoder_ba(self.encoder(out["x_b_warped"]))
        ddf_ab, ddf_ba = normalized_to_voxel(out["flow_ab"]), normalized_to_voxel(out["flow_ba"])
        out["x_a_round_trip"], out["x_b_round_trip"] = round_trip(x_a, ddf_ab, ddf_ba), round_trip(x_b, ddf_ba, ddf_ab)
        out["syn_b_affine"] = self.decoder_ab(warp_normalized(g_a, out["affine_ab"]))
        out["syn_a_affine"] = self.decoder_ba(warp_normalized(g_b, out["affine_ba"]))
        out["reg_b_affine"] = self.decoder_ab(self.encoder(warp_normalized(x_a, out["affine_ab"])))
        out["reg_a_affine"] = self.decoder_ba(self.encoder(warp_normalized(x_b, out["affine_ba"])))
        return out
