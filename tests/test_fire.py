"""FIRE (fire_inverse_consistent_reg): its transforms, losses, three-optimiser schedule and both training configs."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from regplugins.engines import CyclicOptimizerUpdate, prepare_labelled_batch, prepare_registration_batch
from regplugins.io import load_itk_displacement_field
from regplugins.layers import normalized_affine_flow, normalized_to_voxel, round_trip, sample, voxel_grid, warp_normalized
from regplugins.losses import FIRELoss, MINDLoss
from regplugins.losses.fire import label_overlap, rms
from regplugins.metrics import inverse_consistency_error
from regplugins.networks import FIRENet
from regplugins.networks.fire import AffineNetwork, KeypointAffineNetwork, compose_affine_nonrigid
from regplugins.outputs import register_on_native_grids, write_registration_outputs

from conftest import ROOT, run_bundle

FIRE = ROOT / "bundles" / "fire_inverse_consistent_reg"
SMALL = dict(channels=(4, 8, 8), num_res_blocks=1, transform_channels=8, affine_hidden=8)


def smooth_volume(shape) -> torch.Tensor:
    grid = voxel_grid(shape) / (torch.tensor(shape).view(-1, *([1] * len(shape))) - 1)
    return torch.sin(2 * math.pi * grid).prod(dim=0)[None, None]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("affine_head", ["regression", "keypoints"])
def test_an_untrained_network_starts_at_the_identity_affine(spatial_dims, affine_head):
    torch.manual_seed(0)
    network = FIRENet(spatial_dims=spatial_dims, output="affine", affine_head=affine_head, **SMALL).eval()
    pair = torch.rand(2, 2, *([32] * spatial_dims)) * 2 - 1
    features = network.encoder(pair[:, :1])
    theta = network.transform_ab.affine(features, network.encoder(pair[:, 1:]))
    assert torch.allclose(theta, torch.eye(spatial_dims, spatial_dims + 1).expand(2, -1, -1), rtol=0.0, atol=1e-6)
    with torch.no_grad():
        assert network(pair).abs().max() < 1e-5
        full = FIRENet(spatial_dims=spatial_dims, affine_head=affine_head, **SMALL).eval()(pair)
    assert full.shape == (2, spatial_dims, *([32] * spatial_dims)) and full.abs().max() < 0.05
    with pytest.raises(ValueError, match="multiples of 4 and at least 32"):
        network(pair[..., :30])


def test_a_trained_affine_head_reset_to_the_identity_predicts_it_again_and_keeps_its_features():
    # how the weights for pre-aligned pairs start (experiments/fire_reset_affine_heads.py)
    torch.manual_seed(0)
    head = AffineNetwork(spatial_dims=3, feature_channels=4, channels=8, hidden=8)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter))
    features = torch.randn(2, 4, 8, 8, 8), torch.randn(2, 4, 8, 8, 8)
    identity = torch.eye(3, 4).expand(2, -1, -1)
    assert not torch.allclose(head(*features), identity, atol=1e-3)
    first_layer = head.fully_connected[0].weight.clone()
    head.reset_to_identity()
    assert torch.allclose(head(*features), identity, rtol=0.0, atol=1e-6)
    assert torch.equal(head.fully_connected[0].weight, first_layer)


@pytest.mark.parametrize("affine_head", ["regression", "keypoints"])
def test_under_bfloat16_autocast_the_convolutions_run_in_bfloat16_and_the_affines_and_fields_in_float32(affine_head):
    # bfloat16 rounds an affine's diagonal near 1 to steps of 2^-7, as large as the residual of a pre-aligned pair
    from regplugins.inferers import AutocastInferer

    torch.manual_seed(0)
    network = FIRENet(spatial_dims=3, affine_head=affine_head, **SMALL).train()
    if affine_head == "regression":
        with torch.no_grad():  # a small scaling and shift, what the affine head predicts on a pre-aligned pair
            network.transform_ab.affine.fully_connected[-1].bias.copy_(torch.tensor([1.01, 0, 0, 0.003, 0, 1.01, 0, 0, 0, 0, 1.01, 0]))
    pair = torch.rand(1, 2, 32, 32, 32) * 2 - 1
    encoder_dtypes = []
    network.encoder[0].register_forward_hook(lambda module, inputs, output: encoder_dtypes.append(output.dtype))
    outputs = AutocastInferer()(pair, network)
    assert set(encoder_dtypes) == {torch.bfloat16}
    assert {output.dtype for output in outputs.values()} == {torch.float32}
    reference = network(pair)
    for name in ("affine_ab", "affine_ba", "flow_ab"):  # the fields of float32, to float32's precision
        assert (outputs[name] - reference[name]).abs().max() < 1e-5, name
    loss = FIRELoss()(outputs).mean()
    loss.backward()  # the gradients reach the float32 weights
    assert network.encoder[0].conv.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("affine_head", ["regression", "keypoints"])
def test_inference_in_bfloat16_gives_both_fields_in_float32_near_float32s(affine_head):
    from regplugins.inferers import ForwardInverseInferer

    torch.manual_seed(0)
    network = FIRENet(spatial_dims=3, affine_head=affine_head, **SMALL)
    with torch.no_grad():  # a non-rigid field of a few voxels, as a trained network's
        for transform in (network.transform_ab, network.transform_ba):
            transform.nonrigid.head[1].conv.weight.normal_(std=0.01)
    network.eval()
    pair = smooth_volume((32, 32, 32)).expand(1, 2, -1, -1, -1) * torch.tensor([1.0, -0.8]).view(1, 2, 1, 1, 1)
    encoder_dtypes = []
    network.encoder[0].register_forward_hook(lambda module, inputs, output: encoder_dtypes.append(output.dtype))
    with torch.no_grad():
        fields = ForwardInverseInferer(mixed_precision=True)(pair, network)
        assert set(encoder_dtypes) == {torch.bfloat16}
        reference = ForwardInverseInferer()(pair, network)
    assert fields.dtype == torch.float32 and fields.shape == (1, 6, 32, 32, 32)
    assert reference.abs().max() > 0.01  # fields worth comparing
    assert (fields - reference).abs().max() < 0.05 * reference.abs().max()  # 2.5 % here: the features round to 8 bits


def test_the_affine_sub_network_still_depends_on_its_input_and_learns_when_every_hidden_unit_is_negative():
    # in a 3D CPU run every hidden unit of a plain ReLU layer fell silent at once, fixing the affine for good
    torch.manual_seed(0)
    affine = AffineNetwork(spatial_dims=2, feature_channels=4, channels=8, hidden=8)
    torch.nn.init.normal_(affine.fully_connected[-1].weight, std=0.1)  # as after some training
    with torch.no_grad():
        affine.fully_connected[0].bias.fill_(-100.0)
    features_a, features_b = torch.rand(2, 1, 4, 16, 16)
    theta = affine(features_a, features_b)
    assert not torch.allclose(theta, affine(features_b, features_a))
    theta[:, :, -1].sum().backward()
    assert affine.features[0].conv.weight.grad.abs().sum() > 0


def test_the_keypoint_affine_head_trained_on_one_pair_recovers_its_rotation_and_shift():
    # the paper's regressor learns the shift alone (docs/experiments/fire_inverse_consistent_reg.md, item 19);
    # fitted keypoints follow a rotation too
    torch.manual_seed(0)
    moving = torch.nn.functional.interpolate(torch.randn(1, 1, 6, 6), size=(32, 32), mode="bicubic", align_corners=True)
    angle = math.radians(10.0)
    truth = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.1], [math.sin(angle), math.cos(angle), -0.05]]])
    fixed = warp_normalized(moving, normalized_affine_flow(truth, (32, 32)))
    head = KeypointAffineNetwork(spatial_dims=2, feature_channels=1, channels=8)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        loss = (warp_normalized(moving, normalized_affine_flow(head(moving, fixed), (32, 32))) - fixed)[..., 6:-6, 6:-6].square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    theta = head(moving, fixed).detach()
    assert torch.allclose(theta, truth, atol=0.02)
    with pytest.raises(ValueError, match="affine_head"):
        FIRENet(spatial_dims=2, affine_head="points", **SMALL)


def test_an_affine_composed_with_a_zero_field_is_the_affine_and_warps_as_it_says():
    shape = (20, 24, 16)
    theta = torch.tensor([[[1.0, 0.05, 0.0, 0.2], [0.0, 0.9, 0.1, -0.1], [0.02, 0.0, 1.1, 0.0]]])
    assert torch.equal(compose_affine_nonrigid(theta, torch.zeros(1, 3, *shape)), normalized_affine_flow(theta, shape))
    # a pure shift of 0.2 along axis 0 in normalised units is 0.2 * (20 - 1) / 2 voxels everywhere
    shift = torch.tensor([[[1.0, 0, 0, 0.2], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]])
    ddf = normalized_to_voxel(normalized_affine_flow(shift, shape))
    assert torch.allclose(ddf[:, 0], torch.full(shape, 1.9)) and torch.allclose(ddf[:, 1:], torch.zeros(1, 2, *shape), atol=1e-6)
    # the same normalised field warps a finer and a coarser copy of a volume alike
    fine, coarse = smooth_volume((40, 48, 32)), smooth_volume(shape)
    warped_fine = warp_normalized(fine, normalized_affine_flow(shift, (40, 48, 32)))
    warped_coarse = warp_normalized(coarse, normalized_affine_flow(shift, (40, 48, 32)))
    assert torch.allclose(torch.nn.functional.interpolate(warped_fine, size=shape, mode="trilinear", align_corners=True), warped_coarse, atol=0.05)


def test_inverse_consistency_term_is_near_zero_for_a_field_and_its_inverse_and_large_for_a_field_and_itself():
    shape = (32, 32, 32)
    volume = smooth_volume(shape)
    # a smooth deformation of the inner region and its numerical inverse (fixed-point iteration)
    grid = voxel_grid(shape)
    there = 2.0 * torch.sin(math.pi * grid[[1, 2, 0]] / 31.0)[None]
    back = -there.clone()
    for _ in range(30):  # back(p) = -there(p + back(p)) makes there o back the identity
        back = -sample(there, grid[None] + back, padding_mode="border")
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    consistent = rms(round_trip(volume, there, back)[inner], volume[inner])
    with_itself = rms(round_trip(volume, there, there)[inner], volume[inner])
    assert consistent < 0.01 and with_itself > 0.2


def test_fire_loss_terms_are_finite_and_every_term_depends_on_the_network():
    torch.manual_seed(0)
    network = FIRENet(spatial_dims=2, **SMALL).train()
    pair = torch.rand(1, 2, 32, 32) * 2 - 1
    loss = FIRELoss(smoothness_weight=1.0)
    terms = loss.terms(network(pair))
    assert set(terms) == {*loss.weights, "smoothness"}
    assert all(torch.isfinite(v).all() for v in terms.values())
    for name, value in terms.items():
        if name in ("smoothness", "inverse_consistency"):  # zero-ish fields at the start
            continue
        grads = torch.autograd.grad(value.sum(), list(network.parameters()), allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    with pytest.raises(ValueError, match="unknown FIRE loss terms"):
        FIRELoss(weights={"typo": 1.0})


def test_a_direct_similarity_term_adds_to_the_papers_loss_and_reaches_the_transformation_networks():
    torch.manual_seed(0)
    network = FIRENet(spatial_dims=2, **SMALL).train()
    coordinates = torch.linspace(-1, 1, 32)
    disc = (coordinates[:, None].square() + coordinates[None].square() < 0.4).float()
    pair = torch.stack([disc.roll(3, dims=0), 1 - disc])[None] * 2 - 1  # a shifted disc against its inverted contrast
    outputs = network(pair)
    mind = MINDLoss(spatial_dims=2, reduction="none")
    paper, with_similarity = FIRELoss(), FIRELoss(similarity=mind, similarity_weight=3.0)
    term = with_similarity.terms(outputs)["registration_similarity"]
    expected = mind(outputs["x_a_warped"], outputs["x_b"]) + mind(outputs["x_b_warped"], outputs["x_a"])
    assert torch.allclose(term, expected) and float(term) > 0
    assert torch.allclose(with_similarity(outputs), paper(outputs) + 3.0 * term)
    assert "registration_similarity" not in paper.terms(outputs)
    for group in ("affine", "nonrigid"):
        grads = torch.autograd.grad(term.sum(), network.parameter_groups()[group], allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), group
    parser = ConfigParser()  # the train config's setting: none by default, MIND-SSC with a weight
    parser.read_config(str(FIRE / "configs" / "train.json"))
    assert parser.get_parsed_content("loss").similarity is None
    parser.update({"spatial_dims": 2, "registration_similarity_weight": 100.0})
    loss = parser.get_parsed_content("loss", lazy=False)
    assert isinstance(loss.similarity, MINDLoss) and loss.similarity_weight == 100.0


def test_the_label_term_is_lowest_at_the_true_fields_and_trains_both_transformation_groups():
    coordinates = torch.linspace(-1, 1, 32)
    disc = (coordinates[:, None].square() + coordinates[None].square() < 0.4).float()
    moving, fixed = disc.roll(3, dims=0), disc
    batch = {"image": torch.stack([moving, 1 - fixed])[None] * 2 - 1, "moving_label": moving[None, None], "fixed_label": fixed[None, None]}
    pair, labels = prepare_labelled_batch(batch)
    assert torch.equal(pair, batch["image"]) and set(labels) == {"moving_label", "fixed_label"}
    shift = torch.zeros(1, 2, 32, 32)
    shift[:, 0] = 3 / 15.5  # three voxels along the first axis, normalised: warping the moving disc by it gives the fixed one
    true = {"flow_ab": shift, "flow_ba": -shift}
    identity = {"flow_ab": torch.zeros_like(shift), "flow_ba": torch.zeros_like(shift)}
    assert float(label_overlap(true, labels, 2)) < 0.01 < 0.1 < float(label_overlap(identity, labels, 2))

    torch.manual_seed(0)
    network = FIRENet(spatial_dims=2, **SMALL).train()
    outputs = network(pair)
    with_labels = FIRELoss(label_weight=2.0, num_labels=2)
    term = with_labels.terms(outputs, labels)["label_overlap"]
    assert torch.allclose(with_labels(outputs, labels), FIRELoss()(outputs) + 2.0 * term)
    for group in ("affine", "nonrigid"):
        grads = torch.autograd.grad(term.sum(), network.parameter_groups()[group], allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), group
    with pytest.raises(ValueError, match="moving_label and fixed_label"):
        with_labels(outputs, pair)  # the images alone, as prepare_registration_batch gives them
    with pytest.raises(ValueError, match="needs num_labels"):
        FIRELoss(label_weight=1.0)
    parser = ConfigParser()  # the train config's setting: none by default, the synthetic labels with a weight
    parser.read_config(str(FIRE / "configs" / "train.json"))
    assert parser.get_parsed_content("loss").label_weight == 0.0
    parser.update({"spatial_dims": 2, "label_weight": 10.0})
    loss = parser.get_parsed_content("loss", lazy=False)
    assert loss.label_weight == 10.0 and loss.num_labels == parser.get_parsed_content("num_labels")


def test_three_optimizers_step_in_turn_and_each_touches_only_its_own_group():
    torch.manual_seed(0)
    network = FIRENet(spatial_dims=2, **SMALL)
    groups = network.parameter_groups()
    assert sum(len(g) for g in groups.values()) == len(list(network.parameters()))
    optimizers = [torch.optim.Adam(groups[name], lr=1e-2) for name in ("affine", "nonrigid", "synthesis")]
    data = [{"image": torch.rand(2, 32, 32) * 2 - 1} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=1),
        network=network,
        optimizer=optimizers[2],
        loss_function=FIRELoss(),
        prepare_batch=prepare_registration_batch,
        iteration_update=CyclicOptimizerUpdate(optimizers),
        decollate=False,
    )
    snapshots = [{name: [p.detach().clone() for p in params] for name, params in groups.items()}]
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: snapshots.append({n: [p.detach().clone() for p in ps] for n, ps in groups.items()})
    )
    trainer.run()
    for iteration, stepped in enumerate(("affine", "nonrigid", "synthesis")):
        before, after = snapshots[iteration], snapshots[iteration + 1]
        for name in groups:
            changed = any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))
            assert changed == (name == stepped), (iteration, name)


def test_inverse_field_is_written_on_the_moving_grid_and_is_consistent_with_the_forward_one(tmp_path):
    # fixed and moving on different grids; a constant shift on the working grid and its negative
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    moving_affine = np.array([[0, -2.5, 0, 40], [2.5, 0, 0, -10], [0, 0, 2.5, 5], [0, 0, 0, 1.0]])
    paths = {}
    for name, affine, shape in (("fixed", fixed_affine, (24, 20, 16)), ("moving", moving_affine, (18, 22, 14))):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), affine), paths[name])
    working_affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    shift = torch.tensor([1.0, -0.5, 0.25]).view(3, 1, 1, 1).expand(3, 16, 16, 12)
    outputs = register_on_native_grids(shift, working_affine, paths["fixed"], paths["moving"], inverse_ddf=-shift)
    folder = write_registration_outputs(tmp_path / "out", outputs)
    forward, forward_affine = load_itk_displacement_field(folder / "ddf.nii.gz")
    inverse, inverse_affine = load_itk_displacement_field(folder / "inverse_ddf.nii.gz")
    assert inverse.shape == (3, 18, 22, 14) and np.allclose(inverse_affine, moving_affine)
    assert np.allclose(forward[:, 0, 0, 0], [3.0, -1.5, 0.75], atol=1e-5)
    assert inverse_consistency_error(forward, forward_affine, inverse, inverse_affine) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "dims_override", [[], ["--spatial_dims", "2", "--registration_similarity_weight", "10.0", "--label_weight", "1.0"]], ids=["3d", "2d"]
)
def test_train_config_runs_one_iteration_in_3d_and_in_2d_with_the_similarity_and_label_terms(tmp_path, dims_override):
    size = ["--working_size", "32", "--working_spacing", "6.0"] if not dims_override else []
    result = run_bundle(
        "--num_train_pairs",
        "1",
        "--num_val_pairs",
        "1",
        "--train#trainer#max_epochs",
        "1",
        "--batch_size",
        "1",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--ckpt_dir",
        str(tmp_path),
        "--network_def#channels",
        "[4,8,8]",
        "--network_def#transform_channels",
        "8",
        *size,
        *dims_override,
        config="train.json",
        bundle=FIRE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "model.pt", map_location="cpu")
    kernel = state["encoder.0.conv.weight"]
    assert kernel.dim() == (4 if dims_override else 5)


@pytest.mark.parametrize("override, expected", [({}, ("t1", "t2")), ({"modality_pairs": [["ct", "t1"]]}, ("ct", "t1"))])
def test_train_config_pairs_one_ordered_pair_of_modalities_so_the_synthesis_has_one_target(override, expected):
    parser = ConfigParser()
    parser.read_config(str(FIRE / "configs" / "train.json"))
    parser.update({"spatial_dims": 2, **override})
    synthesis = parser.get_parsed_content("train#dataset").transform.transforms[0]  # the first of regplugins.data.synthetic_pairs
    directions = {(pair["moving_modality"], pair["fixed_modality"]) for pair in (synthesis({"seed": s}) for s in range(6))}
    assert directions == {expected}
