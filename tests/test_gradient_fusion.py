"""The gradient-guided gated-fusion bundle: its fusion module, gradient maps and training step (its contract run is in test_bundle)."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from regplugins.layers import GatedFusion, GradientMagnitude
from regplugins.networks import GradientFusionNet

from conftest import ROOT, loss_before_and_after_steps

BUNDLE = ROOT / "bundles" / "ct_mr_gradient_fusion_reg"


def fields(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(2)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gates_lie_in_unit_interval_and_output_has_the_field_shape(spatial_dims):
    shape = (2, spatial_dims, *[8] * spatial_dims)
    fusion = GatedFusion(spatial_dims, channels=spatial_dims)
    torch.nn.init.normal_(fusion.gate.weight, std=3.0)  # trained-looking gates, saturating at both ends
    image_field, gradient_field = fields(shape, seed=0)
    image_gate, gradient_gate = fusion.gates(5 * image_field, 5 * gradient_field)
    for gate in (image_gate, gradient_gate):
        assert gate.shape == shape
        assert gate.min() >= 0 and gate.max() <= 1
    assert image_gate.min() < 0.01 and image_gate.max() > 0.99
    assert fusion(image_field, gradient_field).shape == shape


def test_a_zero_gate_leaves_only_the_other_branch():
    fusion = GatedFusion(3, channels=3)
    torch.nn.init.normal_(fusion.gate.weight, std=0.5)
    torch.nn.init.normal_(fusion.bottleneck.weight, std=0.5)
    image_field, gradient_field = fields((1, 3, 6, 6, 6), seed=1)
    other_image_field, other_gradient_field = fields((1, 3, 6, 6, 6), seed=2)
    image_gate, gradient_gate = fusion.gates(image_field, gradient_field)
    closed = torch.zeros_like(gradient_gate)
    only_image = fusion.fuse(image_field, gradient_field, image_gate, closed)
    assert torch.equal(only_image, fusion.fuse(image_field, other_gradient_field, image_gate, closed))
    assert not torch.allclose(only_image, fusion.fuse(other_image_field, gradient_field, image_gate, closed))
    only_gradient = fusion.fuse(image_field, gradient_field, closed, gradient_gate)
    assert torch.equal(only_gradient, fusion.fuse(other_image_field, gradient_field, closed, gradient_gate))


def test_gated_fusion_starts_as_the_average_it_is_compared_with():
    image_field, gradient_field = fields((1, 3, 6, 6, 6), seed=3)
    average = GatedFusion(3, mode="average")(image_field, gradient_field)
    assert torch.allclose(average, (image_field + gradient_field) / 2)
    assert torch.allclose(GatedFusion(3)(image_field, gradient_field), average, atol=1e-6)


@pytest.mark.parametrize("difference", ["central", "forward"])
def test_gradient_maps_are_zero_for_a_constant_and_non_zero_only_at_a_step(difference):
    gradient = GradientMagnitude(3, difference=difference)
    assert gradient(torch.full((1, 2, 7, 8, 9), 3.5)).max() < 1e-5
    step = torch.zeros(1, 1, 10, 8, 6)
    step[:, :, :, 5:] = 2.0  # the step lies between voxels 4 and 5 of axis 1
    edge = gradient(step)[0, 0] > 1e-5
    at_step = [4, 5] if difference == "central" else [4]
    assert edge.any(dim=(0, 2)).nonzero().flatten().tolist() == at_step
    assert edge[:, at_step].all()


def test_network_returns_the_fused_field_in_eval_mode_and_both_fields_in_training():
    pair = torch.rand(1, 2, 16, 16, 16)
    network = GradientFusionNet().eval()
    with torch.no_grad():
        assert network(pair).shape == (1, 3, 16, 16, 16)
        fused, gradient_field = network.train()(pair)
    assert fused.shape == gradient_field.shape == (1, 3, 16, 16, 16)
    baseline = GradientFusionNet(fusion="none")
    assert not hasattr(baseline, "gradient_branch")
    assert baseline(pair).shape == baseline.eval()(pair).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="divisible by 16"):
        network(torch.rand(1, 2, 24, 16, 16))


def test_training_iterations_lower_the_loss_on_a_fixed_synthetic_pair():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs/train.json"))
    # the motion of a raw pair (the config's default is the residual after pre-alignment), so the steps have work to do
    parser.update(
        {
            "working_shape": [32, 32, 32],
            "working_spacing": 6.0,
            "device": "cpu",
            "rotation_deg": 5.0,
            "translation_mm": 5.0,
            "learning_rate": 1e-3,
            "num_val_pairs": 1,
            "num_workers": 0,
        }
    )
    pair = parser.get_parsed_content("validate#dataset")[0]["image"][None].as_tensor()
    # A fresh network's field is almost zero, where MIND with its variance floor is nearly flat: at the paper's 1e-5
    # a few steps move the loss by less than its rounding, so they are taken at pair optimisation's 1e-3.
    before, after = loss_before_and_after_steps(parser, pair, pair, steps=5)
    assert after < before
