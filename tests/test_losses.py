import pytest
import torch
from monai.networks.blocks import DVF2DDF
from monai.transforms import Compose, Spacingd

from regplugins.data import SyntheticPairGenerator
from regplugins.layers import cached_warp, gaussian_smooth
from regplugins.losses import (
    GlobalNCCLoss,
    GradientFusionLoss,
    InverseConsistencyLoss,
    LaplacianRegularizationLoss,
    MINDDescriptor,
    MINDLoss,
    MultiResolutionRegistrationLoss,
    ParzenMutualInformationLoss,
    TotalVariationLoss,
)
from regplugins.transforms import AntiAliasd, NormalizeModalityd


def ct_t1_same_anatomy():
    """A CT-like and a T1-like image of one synthetic head on one grid, normalised to [0, 1]."""
    pair = SyntheticPairGenerator(shape=(48, 48, 48), spacing=4.0, modalities=("ct", "t1"))(3)
    pair = NormalizeModalityd(["fixed", "fixed_paired"])(pair)
    return pair["fixed_paired"][None].as_tensor(), pair["fixed"][None].as_tensor()


@pytest.mark.parametrize("descriptor", ["mind", "mind_ssc"])
def test_mind_is_lower_for_aligned_ct_t1_than_shifted(descriptor):
    ct, t1 = ct_t1_same_anatomy()
    loss = MINDLoss(radius=1, dilation=2, descriptor=descriptor)
    values = [loss(torch.roll(ct, shifts=shift, dims=2), t1) for shift in (0, 1, 2, 4, 8)]
    # the further the CT is moved off the T1, the larger the loss
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] > 1.1 * values[0]


def test_mind_smoothing_takes_away_the_reward_for_blurring_by_a_subvoxel_warp():
    """Aligned images as the train configs make them (synthesised finer, smoothed, resampled):
    a half-voxel shift only blurs the moving image, yet lowers plain MIND; not once both are smoothed."""
    keys = ["fixed", "fixed_paired"]
    prepare = Compose([NormalizeModalityd(keys), AntiAliasd(keys, pixdim=4.0), Spacingd(keys, pixdim=4.0)])
    for seed in (0, 1):
        pair = prepare(SyntheticPairGenerator(shape=(96, 96, 96), spacing=2.0, modalities=("t1", "ct"))(seed))
        fixed, moving = pair["fixed"][None].as_tensor(), pair["fixed_paired"][None].as_tensor()
        shifted = cached_warp()(moving, torch.full((1, 3, *moving.shape[2:]), 0.5))
        assert MINDLoss()(shifted, fixed) < 0.9 * MINDLoss()(moving, fixed)
        assert MINDLoss(smoothing_sigma=1.0)(shifted, fixed) > MINDLoss(smoothing_sigma=1.0)(moving, fixed)


def test_mind_variance_floor_takes_away_the_reward_for_blurring_the_noise_of_the_air():
    """Aligned T1 and CT prepared as the train configs do: moving the T1's air by half a voxel, which moves no anatomy,
    only blurs its noise; with the MIND authors' floor on V that lowers MIND, with a floor of 1 % it raises it."""
    keys = ["fixed", "fixed_paired"]
    prepare = Compose(
        [
            NormalizeModalityd(keys),
            AntiAliasd(keys, pixdim=4.0),
            Spacingd(keys + ["fixed_label"], pixdim=4.0, mode=["bilinear", "bilinear", "nearest"]),
        ]
    )
    for seed in (0, 1):
        pair = prepare(SyntheticPairGenerator(shape=(96, 96, 96), spacing=2.0, modalities=("t1", "ct"))(seed))
        fixed, moving = pair["fixed"][None].as_tensor(), pair["fixed_paired"][None].as_tensor()
        air = 1 - gaussian_smooth((pair["fixed_label"][None].as_tensor() > 0).float(), [1.0] * 3).clamp(0, 1)
        shifted = cached_warp()(moving, 0.5 * air.expand(1, 3, *air.shape[2:]))
        authors, floored = MINDLoss(descriptor="mind"), MINDLoss(descriptor="mind", variance_floor=0.01)
        assert authors(shifted, fixed) < 0.8 * authors(moving, fixed)
        assert floored(shifted, fixed) > floored(moving, fixed)


@pytest.mark.parametrize("descriptor, channels_3d", [("mind", 6), ("mind_ssc", 12)])
def test_mind_descriptor_shapes_and_invariance_to_contrast(descriptor, channels_3d):
    image = torch.rand(2, 1, 16, 16, 16)
    assert MINDDescriptor(spatial_dims=3, descriptor=descriptor)(image).shape == (2, channels_3d, 16, 16, 16)
    planar = MINDDescriptor(spatial_dims=2, radius=2, dilation=1, descriptor=descriptor)(image[:, :, 0])
    assert planar.shape == (2, 4, 16, 16)
    # a linear intensity change leaves the descriptor unchanged
    values = MINDDescriptor(descriptor=descriptor)(image)
    assert torch.allclose(MINDDescriptor(descriptor=descriptor)(3.0 * image + 7.0), values, atol=1e-4)
    with pytest.raises(ValueError, match="descriptor must be one of"):
        MINDDescriptor(descriptor="mind_dense")


def test_mind_compares_the_voxels_own_patch_and_mind_ssc_only_its_neighbours():
    """A single outlier voxel changes the MIND descriptor at that voxel but not the MIND-SSC one there."""
    image = torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    spiked = image.clone()
    spiked[0, 0, 6, 6, 6] += 5.0
    for descriptor, changed in (("mind", True), ("mind_ssc", False)):
        extractor = MINDDescriptor(radius=0, dilation=2, descriptor=descriptor)
        largest = (extractor(spiked) - extractor(image))[0, :, 6, 6, 6].abs().max().item()
        assert largest > 0.05 if changed else largest < 1e-5, (descriptor, largest)


def test_losses_are_differentiable_in_2d_and_3d():
    for shape in ((1, 1, 20, 20), (1, 1, 12, 12, 12)):
        moving = torch.rand(shape, requires_grad=True)
        fixed = torch.rand(shape)
        for loss in (MINDLoss(spatial_dims=len(shape) - 2), GlobalNCCLoss()):
            loss(moving, fixed).backward()
            assert moving.grad is not None and moving.grad.abs().sum() > 0
            moving.grad = None


def test_parzen_mutual_information_matches_monai_and_ranks_alignment_as_monai_does():
    from monai.losses import GlobalMutualInformationLoss

    ct, t1 = ct_t1_same_anatomy()
    ours, monai = ParzenMutualInformationLoss(num_bins=32), GlobalMutualInformationLoss(num_bins=32)
    shifted = [torch.roll(ct, shifts=shift, dims=2) for shift in (0, 1, 2, 4)]
    values = [ours(image, t1).item() for image in shifted]
    assert all(a < b for a, b in zip(values, values[1:]))  # the further apart, the less information shared
    assert values == pytest.approx([monai(image, t1).item() for image in shifted], abs=0.05)
    # an image shares its entropy with itself, and (almost) nothing with independent noise
    noise = torch.rand_like(t1)
    assert ours(t1, t1) < -1.0 and ours(noise, t1) > -0.02
    prediction = ct.clone().requires_grad_()
    ours(prediction, t1).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0


def test_parzen_mutual_information_value_and_gradient_are_the_loss_and_its_autograd():
    ct, t1 = ct_t1_same_anatomy()
    loss = ParzenMutualInformationLoss(num_bins=32)
    for moving in (ct, torch.roll(ct, shifts=2, dims=2)):
        # values beyond [0, 1] are clipped: no pull on them
        prediction = (moving.flatten() * 1.1 - 0.05).requires_grad_()
        expected = loss(prediction[None], t1.flatten()[None])
        (expected_gradient,) = torch.autograd.grad(expected, prediction)
        value, gradient = loss.value_and_gradient(prediction.detach(), t1.flatten())
        assert value.item() == pytest.approx(expected.item(), abs=1e-5)
        assert torch.allclose(gradient, expected_gradient, atol=1e-3 * expected_gradient.abs().max().item())
        assert (gradient[(prediction < 0) | (prediction > 1)] == 0).all() and gradient.abs().sum() > 0


def test_parzen_mutual_information_of_a_batch_with_samples_left_out_is_each_sample_alone():
    """A batch of samples scores each as it would alone, and a weight of 0 leaves a sample out as if it was not drawn."""
    ct, t1 = ct_t1_same_anatomy()
    loss = ParzenMutualInformationLoss(num_bins=32)
    target = t1.flatten()
    batch = torch.stack([ct.flatten(), torch.roll(ct, shifts=3, dims=2).flatten()])
    kept = torch.rand(batch.shape, generator=torch.Generator().manual_seed(0)) < 0.6
    values, gradients = loss.value_and_gradient(batch, target, kept)
    for prediction, keep, value, gradient in zip(batch, kept, values, gradients):
        alone, alone_gradient = loss.value_and_gradient(prediction[keep], target[keep])
        assert value.item() == pytest.approx(alone.item(), abs=1e-6)
        assert torch.allclose(gradient[keep], alone_gradient, atol=1e-7) and (gradient[~keep] == 0).all()
    assert values[0] < values[1] - 0.05  # the rolled sample shares less


def test_global_ncc_values():
    image = torch.rand(2, 1, 10, 10, 10)
    assert torch.allclose(GlobalNCCLoss()(2.0 * image + 1.0, image), torch.tensor(0.0), atol=1e-4)
    assert torch.allclose(GlobalNCCLoss()(-image, image), torch.tensor(2.0), atol=1e-4)
    assert GlobalNCCLoss(reduction="none")(image, image).shape == (2,)


def test_laplacian_regularizer_zero_for_affine_field_and_exact_for_quadratic():
    x = torch.arange(8.0).view(8, 1, 1).expand(8, 8, 8)
    affine_field = torch.stack([0.5 * x, torch.zeros_like(x), torch.ones_like(x)])[None]
    assert LaplacianRegularizationLoss(l1=1.0, l2=0.0)(affine_field) < 1e-8
    quadratic = torch.stack([x**2, torch.zeros_like(x), torch.zeros_like(x)])[None]
    # lap(x^2) = 2 everywhere, so mean ||lap||^2 = 4
    assert torch.allclose(LaplacianRegularizationLoss(l1=1.0, l2=0.0)(quadratic), torch.tensor(4.0))
    constant = torch.ones(1, 3, 5, 5, 5)
    assert torch.allclose(LaplacianRegularizationLoss(l1=0.5, l2=0.01)(constant), torch.tensor(0.03))


def test_total_variation_of_a_ramp():
    x = torch.arange(6.0).view(6, 1).expand(6, 6)
    ramp = torch.stack([3.0 * x, torch.zeros_like(x)])[None]  # d/dx = 3 along axis 0 only
    assert torch.allclose(TotalVariationLoss()(ramp), torch.tensor(3.0))
    assert TotalVariationLoss()(torch.ones(1, 3, 4, 4, 4)) == 0


def test_gradient_fusion_smoothness_is_voxelmorphs_mean_over_axes():
    x = torch.arange(8.0).view(8, 1, 1).expand(8, 8, 8)
    ramp = torch.stack([0.1 * x, torch.zeros_like(x), torch.zeros_like(x)])[None]
    # one of 3 components grows by 0.1 along one of 3 axes: 0.01 / 3 averaged over components, / 3 over axes
    assert torch.allclose(GradientFusionLoss().smoothness(ramp), torch.tensor(0.01 / 9))
    weighted = GradientFusionLoss(fused_smoothness_weight=0.5).terms(ramp, torch.rand(1, 2, 8, 8, 8))[1]
    assert torch.allclose(weighted, torch.tensor(0.5 * 0.01 / 9))


def test_inverse_consistency_small_for_true_inverse_large_for_mismatch():
    generator = torch.Generator().manual_seed(1)
    velocity = 2.0 * torch.nn.functional.interpolate(
        torch.randn(1, 3, 4, 4, 4, generator=generator), size=(24, 24, 24), mode="trilinear", align_corners=True
    )
    integrate = DVF2DDF(num_steps=7)
    forward, backward = integrate(velocity), integrate(-velocity)
    consistent = InverseConsistencyLoss()(forward, backward)
    inconsistent = InverseConsistencyLoss()(forward, forward)
    assert consistent < 0.05 * inconsistent


def test_multiresolution_loss_trains_every_level():
    pair = torch.rand(1, 2, 16, 16, 16)
    fields = [torch.zeros(1, 3, 16 // f, 16 // f, 16 // f, requires_grad=True) for f in (1, 2, 4)]
    loss = MultiResolutionRegistrationLoss(MINDLoss(), TotalVariationLoss(), regularizer_weight=0.1)
    loss([f + 0.1 for f in fields], pair).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fields)
    # one field alone is the finest level
    assert torch.allclose(loss(torch.zeros(1, 3, 16, 16, 16), pair), MINDLoss()(pair[:, :1], pair[:, 1:]))
