"""ct_mr_dual_similarity_reg: the unpadded patch U-Net, tiled whole-image inference and the intra-modality NCC loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from regplugins.engines import prepare_paired_batch
from regplugins.inferers import ValidPatchInferer, fold_batch_norm
from regplugins.io import RegistrationInputError, paired_training_data
from regplugins.losses import IntraModalitySimilarityLoss
from regplugins.networks import MultiResolutionFCN, PatchRegistrationUNet

from conftest import ROOT, loss_before_and_after_steps, read_datalist, run_bundle

BUNDLE = ROOT / "bundles" / "ct_mr_dual_similarity_reg"


def test_unpadded_unet_maps_68_cubed_to_the_28_cubed_center_field():
    network = PatchRegistrationUNet().eval()
    with torch.no_grad():
        assert network(torch.rand(1, 2, 68, 68, 68)).shape == (1, 3, 28, 28, 28)
        assert network(torch.rand(2, 2, 72, 68, 76)).shape == (2, 3, 32, 28, 36)
    with pytest.raises(ValueError, match="multiples of 4"):
        network(torch.rand(1, 2, 66, 68, 68))


class CenterOfFirstChannel(torch.nn.Module):
    """A stand-in network whose field is the centre of its input's first channel, three times; it counts the patches it sees."""

    patches = 0

    def forward(self, patch):
        self.patches += patch.shape[0]
        margin = PatchRegistrationUNet.margin
        center = patch[:, :1, margin:-margin, margin:-margin, margin:-margin]
        return center.repeat(1, 3, 1, 1, 1)


@pytest.mark.parametrize("patch_size, patches", [(68, 2 * 3 * 2), (100, 1)])  # output tiles of at most 28 voxels, or 60
def test_tiling_reassembles_a_known_smooth_field_without_seams(patch_size, patches):
    shape = (45, 60, 31)  # not multiples of the output tiles
    axes = torch.meshgrid(*(torch.linspace(0, 1, s) for s in shape), indexing="ij")
    field = torch.sin(3 * axes[0]) * torch.cos(2 * axes[1]) + axes[2] ** 2
    pair = torch.stack([field, torch.zeros(shape)])[None]
    network = CenterOfFirstChannel()
    assembled = ValidPatchInferer(patch_size=patch_size, batch_size=3)(pair, network)
    assert assembled.shape == (1, 3, *shape) and network.patches == patches
    torch.testing.assert_close(assembled, field.expand(1, 3, *shape))


@pytest.mark.parametrize("patch_size", [68, 76, 168])  # the paper's 68^3 patches, others, and one patch for the image
def test_tiled_field_equals_the_network_on_the_whole_padded_image(patch_size):
    torch.manual_seed(0)
    network = PatchRegistrationUNet().eval()
    torch.nn.init.normal_(network.field.weight, std=0.1)  # a non-trivial field
    pair = torch.rand(1, 2, 40, 30, 36)
    with torch.no_grad():
        tiled = ValidPatchInferer(patch_size=patch_size, batch_size=4)(pair, network)
        # the whole image, padded by the margin and up to the network's multiple of 4, in one pass
        whole = network(F.pad(pair, [20, 20, 20, 20 + 2, 20, 20]))
    torch.testing.assert_close(tiled, whole[:, :, :40, :30, :36], atol=1e-5, rtol=1e-4)


def test_batch_norm_folded_into_the_convolutions_gives_the_networks_field():
    torch.manual_seed(0)
    network = PatchRegistrationUNet()
    with torch.no_grad():
        network(torch.rand(2, 2, 68, 68, 68) * 3.0)  # running statistics far from batch norm's initial ones
    torch.nn.init.normal_(network.field.weight, std=0.1)
    network.eval()
    folded = fold_batch_norm(network)

    def count(model):
        return sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())

    assert count(folded) == 0 and count(network) == 10  # a copy: the network keeps its layers
    pair = torch.rand(1, 2, 68, 68, 68)
    with torch.no_grad():
        torch.testing.assert_close(folded(pair), network(pair), atol=1e-5, rtol=1e-4)
    assert fold_batch_norm(network.train()) is network  # training uses the batch's statistics
    other = MultiResolutionFCN().eval()  # MONAI's Convolution blocks: the norm is not the convolution's neighbour
    assert fold_batch_norm(other) is other


def test_mixed_precision_gives_the_float32_field_to_bfloat16_rounding_and_a_float32_result():
    torch.manual_seed(0)
    network = PatchRegistrationUNet().eval()
    torch.nn.init.normal_(network.field.weight, std=0.1)
    pair = torch.rand(1, 2, 40, 30, 36)
    with torch.no_grad():
        exact = ValidPatchInferer(patch_size=168)(pair, network)
        rounded = ValidPatchInferer(patch_size=168, mixed_precision=True)(pair, network)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
    assert (rounded - exact).abs().max() < 0.05 * exact.abs().max()


def _target(moving, fixed, moving_paired, fixed_paired, fixed_is_ct):
    return {"images": torch.stack([moving, fixed, moving_paired, fixed_paired], dim=1), "fixed_is_ct": torch.tensor(fixed_is_ct)}


def test_intra_modality_loss_is_zero_for_aligned_pairs_and_ignores_linear_intensity_changes():
    torch.manual_seed(0)
    ct, mr = torch.rand(2, 1, 48, 48, 48).unbind(0)
    loss = IntraModalitySimilarityLoss()
    zero_field = torch.zeros(1, 3, 8, 8, 8)
    # moving MR and fixed CT of one anatomy: their counterparts are the same images in the other modality
    aligned = loss(zero_field, _target(mr, ct, 3.0 * ct + 1.0, 0.5 * mr - 2.0, [True]))
    assert aligned.abs() < 1e-4
    shifted = loss(zero_field, _target(mr, ct, torch.roll(ct, 3, dims=1), torch.roll(mr, 3, dims=1), [True]))
    assert shifted > 0.05


def test_intra_modality_loss_weighs_the_ct_and_the_mr_term_by_modality():
    torch.manual_seed(1)
    ct, mr, noise = torch.rand(3, 1, 48, 48, 48).unbind(0)
    zero_field = torch.zeros(1, 3, 8, 8, 8)
    ct_only = IntraModalitySimilarityLoss(ct_weight=1.0, mr_weight=0.0)
    # fixed CT: the CT term compares the fixed image with the moving anatomy's CT counterpart
    assert ct_only(zero_field, _target(mr, ct, ct, noise, [True])).abs() < 1e-4
    assert ct_only(zero_field, _target(mr, ct, noise, mr, [True])) > 0.5
    # fixed MR (the other direction): now the CT term is the moving image against the fixed anatomy's CT
    assert ct_only(zero_field, _target(ct, mr, noise, ct, [False])).abs() < 1e-4
    with pytest.raises(ValueError, match="not both 0"):
        IntraModalitySimilarityLoss(ct_weight=0.0, mr_weight=0.0)


def test_one_training_step_lowers_the_loss_on_a_synthetic_paired_batch():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs/train.json"))
    # the motion of a raw pair (the config's default is the residual after pre-alignment), so the step has work to do
    parser.update({"working_shape": [28, 28, 28], "working_spacing": 6.0, "device": "cpu", "rotation_deg": 5.0, "translation_mm": 5.0})
    parser.update({"num_val_pairs": 1, "num_workers": 0})
    sample = parser.get_parsed_content("validate#dataset")[0]
    batch = {"image": sample["image"][None].as_tensor(), "fixed_modality": [sample["fixed_modality"]]}
    inputs, target = prepare_paired_batch(batch)
    assert inputs.shape == (1, 2, 68, 68, 68) and target["images"].shape[1] == 4
    before, after = loss_before_and_after_steps(parser, inputs, target)
    assert after < before


@pytest.mark.slow
def test_training_runs_on_a_users_paired_datalist(synthetic_pairs, tmp_path):
    """{ct, mr, paired_ct, paired_mr} entries: the synthetic set's files (moving CT, fixed T1) as a user's data."""
    entries = [
        {"ct": e["moving"], "mr": e["fixed"], "paired_mr": e["moving_paired"], "paired_ct": e["fixed_paired"]} for e in read_datalist(synthetic_pairs)
    ]
    datalist = synthetic_pairs.parent / "paired.json"
    datalist.write_text(json.dumps(entries))
    result = run_bundle(
        "--train_datalist",
        str(datalist),
        "--val_datalist",
        str(datalist),
        "--working_spacing",
        "4.0",
        "--train#trainer#max_epochs",
        "1",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--ckpt_dir",
        str(tmp_path),
        config="train.json",
        bundle=BUNDLE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_loss:" in result.stdout + result.stderr
    assert (tmp_path / "model.pt").exists()


def test_a_paired_datalist_entry_without_its_counterparts_is_named(tmp_path):
    datalist = tmp_path / "paired.json"
    datalist.write_text(json.dumps([{"ct": "ct.nii.gz", "mr": "mr.nii.gz"}]))
    with pytest.raises(RegistrationInputError, match="entry 0 lacks paired_ct, paired_mr"):
        paired_training_data(str(datalist))
