"""The 3D CNNs of the rigid head CT/MR framework (Islam, Wijewickrema and O'Leary, "A deep learning based
framework for the registration of three dimensional multi-modal medical images of the head", Scientific
Reports 11, 2021, doi:10.1038/s41598-021-81044-7): the rigid regressor with its feature-based ANN, and
the modality classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn

from regplugins.utils import as_flag

from .bayesian_ann import BayesianRegularizedANN

__all__ = ["RigidRegressionCNN", "ModalityClassifierCNN", "AppendCoordinates", "feature_encoder"]


class AppendCoordinates(nn.Module):
    """Appends each voxel's normalised grid coordinates (-1 to 1 along every axis) as extra channels.

    Global average pooling forgets where a feature lies, so an encoder that pools one image at a
    time sees a shifted head almost as it sees the unshifted one. With the coordinates as input
    channels the first convolutions can weight intensities by position, and the pooled features
    carry moments of the head (centre and orientation, what the paper's symmetry alignment
    computes by hand) as CoordConv does (Liu et al., NeurIPS 2018).
    """

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        axes = [torch.linspace(-1.0, 1.0, n, device=image.device, dtype=image.dtype) for n in image.shape[2:]]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
        return torch.cat([image, grid.expand(image.shape[0], *grid.shape)], dim=1)


def feature_encoder(spatial_dims: int, channels: Sequence[int], coordinate_channels: bool = False) -> nn.Sequential:
    """One image to ``channels[-1]`` features: blocks of convolution, batch norm and LeakyReLU (0.1),
    max pooling between them, and global average pooling after the last convolution (the paper's Fig. 4).
    With ``coordinate_channels`` the image enters with its voxel coordinates (:class:`AppendCoordinates`)."""
    coordinate_channels = as_flag(coordinate_channels, "coordinate_channels")
    layers: list[nn.Module] = [AppendCoordinates()] if coordinate_channels else []
    in_channels = 1 + spatial_dims * coordinate_channels
    for level, out_channels in enumerate(channels):
        if level > 0:
            layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2))
        layers.append(Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm="batch", act=("leakyrelu", {"negative_slope": 0.1})))
        in_channels = out_channels
    layers += [Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten()]
    return nn.Sequential(*layers)


class RigidRegressionCNN(nn.Module):
    """Maps a (moving, fixed) pair to the six Euler3DTransform parameters that take fixed points to moving ones.

    The same encoder turns each image into ``channels[-1]`` features (the activations of its last
    convolution, averaged), so that the features of an image do not depend on its partner, as
    the paper's feature extractor works per image. Two heads read the concatenated features:

    - ``regression``, the fully connected layer the CNN is trained with (the paper's "DCNN");
    - ``ann``, the Bayesian-regularised network fitted afterwards on the frozen features (the
      paper's proposed method: 256 inputs, 10 tanh units, 6 outputs).

    ``head`` picks the one ``forward`` uses, so both are benchmarked from one checkpoint.
    Outputs are three angles in degrees (about x, y, z; ITK's ``Rz Rx Ry``) and three
    translations in mm, in the fixed image's LPS frame about the centre of its working grid
    (:mod:`regplugins.rigid.parameters`).

    Args:
        spatial_dims: number of spatial dimensions (3).
        channels: output channels of the convolution blocks; the last gives the features per image.
        hidden_features: hidden tanh units of the ANN.
        head: ``"ann"`` or ``"regression"``.
        coordinate_channels: give the encoder each voxel's coordinates (:class:`AppendCoordinates`);
            off is the paper's encoder.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        hidden_features: int = 10,
        head: str = "ann",
        coordinate_channels: bool = False,
    ):
        super().__init__()
        if head not in ("ann", "regression"):
            raise ValueError(f'head must be "ann" or "regression", got {head!r}.')
        self.head = head
        self.encoder = feature_encoder(spatial_dims, channels, coordinate_channels)
        self.regression = nn.Linear(2 * channels[-1], 6)
        self.ann = BayesianRegularizedANN(2 * channels[-1], hidden_features, 6)

    def features(self, pair: torch.Tensor) -> torch.Tensor:
        """``(B, 2 * features)``: the moving image's features, then the fixed image's."""
        batch = pair.shape[0]
        per_image = self.encoder(pair.reshape(batch * 2, 1, *pair.shape[2:]))
        return per_image.reshape(batch, -1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        features = self.features(pair)
        return self.ann(features) if self.head == "ann" else self.regression(features)


class ModalityClassifierCNN(nn.Module):
    """The same encoder with a classification head: logits of (CT, MR) for one image ``(B, 1, *spatial)``.

    The paper replaces the regressor's fully connected output by a softmax classifier and trains
    it with cross-entropy; it tells which input is the CT (moving) and which the MR (fixed).
    """

    classes = ("ct", "mr")

    def __init__(self, spatial_dims: int = 3, channels: Sequence[int] = (8, 16, 32, 64, 128)):
        super().__init__()
        self.encoder = feature_encoder(spatial_dims, channels)
        self.classify = nn.Linear(channels[-1], len(self.classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encoder(image))
