import pytest
import torch

from regplugins.networks import MultiResolutionFCN
from regplugins.networks.fcn_multires import _upsample_field


@pytest.mark.parametrize(
    "variant, train_shapes",
    [("multires", [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8), (1, 3, 4, 4, 4)]), ("no_pooling", [(1, 3, 16, 16, 16)]), ("coarse", [(1, 3, 16, 16, 16)])],
)
def test_fcn_variants_predict_fields_finest_first(variant, train_shapes):
    network = MultiResolutionFCN(variant=variant, encoder_channels=(4, 8, 8), conv4_channels=8, decoder_channels=(8, 4))
    pair = torch.rand(1, 2, 16, 16, 16)
    assert [tuple(f.shape) for f in network.train()(pair)] == train_shapes
    assert network.eval()(pair).shape == (1, 3, 16, 16, 16)


def test_coarse_field_is_upsampled_in_fine_voxels():
    coarse = torch.ones(1, 3, 4, 4, 4)  # one coarse voxel everywhere
    assert torch.allclose(_upsample_field(coarse, (16, 16, 16)), torch.full((1, 3, 16, 16, 16), 4.0))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        MultiResolutionFCN(variant="unet")
