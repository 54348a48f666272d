import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

import regplugins
from regplugins.alignment import _rotation, affine_about, fit_affine, least_turned_pose, principal_axes_turns, rotation_vector, warp_affine
from regplugins.data import SyntheticPairGenerator
from regplugins.layers import ImageDomain, apply_affine, voxel_grid
from regplugins.transforms import AffineAlignd, ComposeAffined, NormalizeModalityd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rigid_ct_t1_pair():
    """A CT-like moving and T1-like fixed head on one 4 mm grid, up to 12 degrees and 12 mm apart, no deformation."""
    generator = SyntheticPairGenerator(shape=(48, 48, 48), spacing=4.0, rotation_deg=12.0, translation_mm=12.0, deformation_mm=0.0)
    pair = NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(11))
    affine = pair["fixed"].affine.double()
    true_voxel_matrix = torch.linalg.inv(affine) @ pair["true_affine"].double() @ affine
    return pair, true_voxel_matrix


def head_point_error(matrix, truth, head):
    """Mean distance in voxels between where two matrices send the head's voxels."""
    points = voxel_grid(head.shape, dtype=torch.float64)[:, head]
    return (apply_affine(matrix, points) - apply_affine(truth, points)).norm(dim=0).mean().item()


@pytest.mark.parametrize("transform", ["rigid", "affine"])
def test_fit_affine_recovers_the_rigid_motion_of_a_ct_mr_pair(rigid_ct_t1_pair, transform):
    pair, truth = rigid_ct_t1_pair
    head = pair["fixed_label"][0].as_tensor() > 0
    identity = torch.eye(4, dtype=torch.float64)
    assert head_point_error(identity, truth, head) > 2.0  # the pair starts more than two voxels apart
    fitted = fit_affine(pair["fixed"][0], pair["moving"][0], transform=transform)
    # within a voxel: on this coarse grid the optimum of mutual information itself is ~0.6 voxel off
    assert head_point_error(fitted, truth, head) < 1.0
    # the fit is deterministic for a pair
    assert torch.equal(fitted, fit_affine(pair["fixed"][0], pair["moving"][0], transform=transform))


def turn_angle_deg(first: torch.Tensor, second: torch.Tensor) -> float:
    """The angle of the rotation between two 3x3 rotation matrices."""
    return math.degrees(math.acos(min(1.0, max(-1.0, (float((first.T @ second).trace()) - 1) / 2))))


def test_fits_from_a_batch_of_starts_are_the_fits_from_each_alone(rigid_ct_t1_pair):
    """The search screens its eleven starts at once: each fit of the batch is the one its start gives alone."""
    pair, _ = rigid_ct_t1_pair
    fixed, moving = pair["fixed"][0], pair["moving"][0]
    starts = torch.stack([torch.zeros(3, dtype=torch.float64), *(0.5 * torch.eye(3, dtype=torch.float64)[:2])])
    batch = fit_affine(fixed, moving, transform="rigid", levels=(4, 2), iterations=(20, 10), rotation=starts)
    alone = [fit_affine(fixed, moving, transform="rigid", levels=(4, 2), iterations=(20, 10), rotation=start) for start in starts]
    assert batch.shape == (3, 4, 4)
    # to float64 rounding: batched and single matrix products may sum in another order (1e-17 on an Intel Xeon)
    assert all(torch.allclose(fitted, each, rtol=0.0, atol=1e-12) for fitted, each in zip(batch, alone))
    assert not torch.allclose(batch[0], batch[2], atol=1e-3)  # the starts led somewhere different


def test_rotation_vector_inverts_the_rotation_matrix_up_to_and_at_half_a_turn():
    generator = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64, generator=generator), dim=1)
    near_half_a_turn = math.pi - torch.logspace(-9, -1, 100, dtype=torch.float64)
    angles = torch.cat([torch.rand(100, dtype=torch.float64, generator=generator) * math.pi, near_half_a_turn])
    for vector in axes * angles[:, None]:
        assert torch.allclose(rotation_vector(_rotation(vector)), vector, atol=1e-6)
    for axis in torch.eye(3, dtype=torch.float64):  # at half a turn, v and -v are one rotation
        found = rotation_vector(_rotation(math.pi * axis))
        assert torch.allclose(found.abs(), math.pi * axis, atol=1e-9)
    assert torch.equal(rotation_vector(torch.eye(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))


def test_the_least_turned_pose_within_the_margin_is_kept_and_a_clear_winner_stays():
    """Screened fits and their scores as on the tests' pair 0 (a pose turned half round 0.021 nats above the right one,
    which its headers leave 6 degrees off) and on a turned MNI152 head (the right pose 62 degrees off, a wrong one 30
    degrees off 0.39 nats below it): of the pose kept, its best-scoring fit."""

    def pose(degrees: float, axis: int = 2) -> torch.Tensor:
        zero = torch.zeros(3, dtype=torch.float64)
        return affine_about(math.radians(degrees) * torch.eye(3, dtype=torch.float64)[axis], zero, zero)

    round_head = [pose(6), pose(113, 0), pose(180, 1), pose(8)]
    round_scores = [-0.620, -0.551, -0.641, -0.626]
    assert least_turned_pose(round_head, round_scores, 0.05) == 3
    assert least_turned_pose(round_head, round_scores, 0.0) == 2
    turned_head = [pose(30), pose(57, 0), pose(61.5), pose(62), pose(178, 1)]
    assert least_turned_pose(turned_head, [-0.472, -0.355, -0.849, -0.864, -0.472], 0.05) == 3


def test_one_of_the_principal_axes_turns_is_near_a_head_turned_half_a_turn(rigid_ct_t1_pair):
    """A quarter turn either way about each axis (the other starts) is 90 degrees from a head upside down."""
    pair, _ = rigid_ct_t1_pair
    fixed = pair["fixed"][0].as_tensor()
    center = (torch.tensor(fixed.shape, dtype=torch.float64) - 1) / 2
    for turn in (torch.tensor([math.pi, 0.0, 0.0]), torch.tensor([2.0, -1.2, 0.5])):
        truth = affine_about(turn.double(), torch.zeros(3, dtype=torch.float64), center)
        moving = warp_affine(fixed[None, None], truth)[0, 0]  # moving(p) = fixed(truth p): the fit's answer is its inverse
        errors = [turn_angle_deg(_rotation(start), truth[:3, :3].T) for start in principal_axes_turns(fixed, moving)]
        assert min(errors) < 5.0, errors


def test_prealignment_that_searches_turns_finds_a_head_turned_about_several_axes(rigid_ct_t1_pair):
    """The deformable bundles' ``prealign_search``: from the headers' pose alone the fit stays far off such a head."""
    pair, _ = rigid_ct_t1_pair
    ct = NormalizeModalityd("fixed_paired", modality="ct")(pair)["fixed_paired"]
    center = torch.tensor([23.5, 23.5, 23.5], dtype=torch.float64)
    truth = affine_about(torch.tensor([2.0, -1.2, 0.5], dtype=torch.float64), torch.tensor([2.0, -1.0, 1.5], dtype=torch.float64), center)
    moving = warp_affine(ct[None].as_tensor(), truth)[0]  # 137 degrees about an oblique axis
    head, inverse = pair["fixed_label"][0].as_tensor() > 0, torch.linalg.inv(truth)
    found, missed = (
        AffineAlignd("moving", transform="rigid", search_turns=search)({"fixed": pair["fixed"], "moving": moving})["prealign_matrix"]
        for search in (True, False)
    )
    assert head_point_error(found, inverse, head) < 1.0  # voxels (4 mm)
    assert head_point_error(missed, inverse, head) > 5.0


def test_fit_affine_recovers_a_known_affine_with_scaling_and_shear(rigid_ct_t1_pair):
    pair, _ = rigid_ct_t1_pair
    # the CT-like image of the fixed anatomy, moved by scaling of up to 8 %, shear of 0.06 and a few voxels of translation
    center = torch.tensor([23.5, 23.5, 23.5], dtype=torch.float64)
    linear = torch.tensor([[1.08, 0.06, 0.0], [0.0, 0.95, 0.04], [0.03, 0.0, 1.05]], dtype=torch.float64)
    truth = torch.eye(4, dtype=torch.float64)
    truth[:3, :3], truth[:3, 3] = linear, center + torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64) - linear @ center
    ct = NormalizeModalityd("fixed_paired", modality="ct")(pair)["fixed_paired"]
    moving = warp_affine(ct[None].as_tensor(), truth)[0, 0]
    head = pair["fixed_label"][0].as_tensor() > 0
    identity = torch.eye(4, dtype=torch.float64)
    inverse = torch.linalg.inv(truth)  # moving(M p) = fixed_paired(truth M p) matches fixed(p) for M = truth^-1
    assert head_point_error(identity, inverse, head) > 2.0
    assert head_point_error(fit_affine(pair["fixed"][0], moving, transform="rigid"), inverse, head) > 0.8  # a rigid fit cannot
    assert head_point_error(fit_affine(pair["fixed"][0], moving, transform="affine"), inverse, head) < 0.5  # voxels (4 mm)


def test_prealignment_and_composition_give_the_field_that_warps_the_original_moving_image(rigid_ct_t1_pair):
    pair, _ = rigid_ct_t1_pair
    moving = pair["moving"].clone()
    moving.meta["filename_or_obj"] = "moving.nii.gz"
    data = AffineAlignd("moving", transform="rigid")({"fixed": pair["fixed"], "moving": moving})
    matrix = data["prealign_matrix"]
    assert data["moving"].meta["filename_or_obj"] == "moving.nii.gz"  # the saver reads the native file from it
    # a network that predicts no motion on the aligned pair: the composed field is the matrix's alone
    composed = ComposeAffined("pred")({"pred": torch.zeros(3, 48, 48, 48), "prealign_matrix": matrix})["pred"]
    grid = voxel_grid((48, 48, 48), dtype=torch.float64)
    assert torch.allclose(composed.double(), apply_affine(matrix, grid) - grid, atol=1e-4)
    # a network field u on top: the composed field samples the original image where the pipeline does
    u = torch.zeros(3, 48, 48, 48)
    u[0] = 1.5
    composed = ComposeAffined("pred")({"pred": u, "prealign_matrix": matrix})["pred"]
    via_pipeline = warp_affine(data["moving"][None].as_tensor(), torch.eye(4), grid.float() + u)
    direct = warp_affine(pair["moving"][None].as_tensor(), torch.eye(4), grid.float() + composed)
    without_matrix = warp_affine(pair["moving"][None].as_tensor(), torch.eye(4), grid.float() + u)
    # equal up to the second linear interpolation of the pipeline's route
    assert (via_pipeline - direct).abs().mean() < 0.1 * (via_pipeline - without_matrix).abs().mean()


def test_no_prealignment_is_the_identity_and_bad_settings_are_refused(rigid_ct_t1_pair):
    pair, _ = rigid_ct_t1_pair
    data = AffineAlignd("moving", transform="none")({"fixed": pair["fixed"], "moving": pair["moving"]})
    assert torch.equal(data["moving"], pair["moving"]) and torch.equal(data["prealign_matrix"], torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="transform"):
        AffineAlignd("moving", transform="syn")
    with pytest.raises(ValueError, match="transform"):
        fit_affine(pair["fixed"][0], pair["moving"][0], transform="similarity")


def test_moving_labels_follow_the_prealignment_as_labels(rigid_ct_t1_pair):
    """A training pair's labels move with its image (nearest neighbour), so the head overlap comes back."""
    pair, _ = rigid_ct_t1_pair
    data = AffineAlignd("moving", transform="rigid", label_keys="moving_label")(dict(pair))
    head = pair["fixed_label"][0] > 0

    def head_dice(labels):
        moved = labels[0] > 0
        return (2 * (moved & head).sum() / (moved.sum() + head.sum())).item()

    assert head_dice(data["moving_label"]) > head_dice(pair["moving_label"]) + 0.05
    assert head_dice(data["moving_label"]) > 0.95
    assert set(data["moving_label"].unique().tolist()) <= set(pair["moving_label"].unique().tolist())


def test_fit_affine_aligns_a_moving_image_that_covers_part_of_the_head_when_told_where_it_has_data():
    # a clinical MR of the brain against a CT of the whole head: the moving image stops 40 % of the way up the head
    generator = SyntheticPairGenerator(shape=(48, 48, 48), spacing=4.0, rotation_deg=12.0, translation_mm=12.0, deformation_mm=0.0)
    pair = NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(12))
    affine = pair["fixed"].affine.double()
    truth = torch.linalg.inv(affine) @ pair["true_affine"].double() @ affine
    head = pair["fixed_label"][0].as_tensor() > 0
    moving = pair["moving"][0].as_tensor().clone()
    rows = torch.nonzero(moving.flatten(0, 1).amax(0) > 0.1)[:, 0]
    cut = int(rows.min() + 0.4 * (rows.max() - rows.min()))
    moving[:, :, :cut] = 0  # as the moving image resampled onto the grid with zero padding is
    source_grid = torch.eye(4, dtype=torch.float64)
    source_grid[2, 3] = -cut  # the moving image's own grid starts at that slice
    domain = ImageDomain(source_grid, (48, 48, 48 - cut))
    start = head_point_error(torch.eye(4, dtype=torch.float64), truth, head)
    # the padding taken for air: the cut-off edge is matched to the outline of the head, most of the start's error left
    assert head_point_error(fit_affine(pair["fixed"][0], moving), truth, head) > 0.7 * start
    assert head_point_error(fit_affine(pair["fixed"][0], moving, moving_domain=domain), truth, head) < 1.0


def test_prealignment_fits_at_levels_in_millimetres_on_a_grid_finer_than_its_spacing(rigid_ct_t1_pair):
    """12, 6 and 3 mm whatever the working grid; a coarser grid keeps its own levels, boxes averaged as ever."""
    coarse, _ = rigid_ct_t1_pair  # 4 mm: coarser than 3 mm
    data = AffineAlignd("moving", transform="rigid")({"fixed": coarse["fixed"], "moving": coarse["moving"]})
    assert torch.equal(data["prealign_matrix"], fit_affine(coarse["fixed"][0], coarse["moving"][0], transform="rigid"))

    generator = SyntheticPairGenerator(shape=(96, 96, 96), spacing=2.0, rotation_deg=12.0, translation_mm=12.0, deformation_mm=0.0)
    pair = NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(11))
    affine = pair["fixed"].affine.double()
    truth = torch.linalg.inv(affine) @ pair["true_affine"].double() @ affine
    head = pair["fixed_label"][0].as_tensor() > 0
    fitted = AffineAlignd("moving", transform="rigid")({"fixed": pair["fixed"], "moving": pair["moving"]})["prealign_matrix"]
    assert torch.equal(fitted, fit_affine(pair["fixed"][0], pair["moving"][0], transform="rigid", levels=(6, 3, 1.5)))
    assert head_point_error(torch.eye(4, dtype=torch.float64), truth, head) > 4.0
    assert head_point_error(fitted, truth, head) < 0.5  # voxels of 2 mm: the finest level, 3 mm, is a fractional one


@pytest.mark.parametrize(
    "bundle", ["fcn_multires_selfsup_reg", "ct_mr_gradient_fusion_reg", "ct_mr_dual_similarity_reg", "fire_inverse_consistent_reg"]
)
def test_the_deformable_bundles_finish_the_prealignment_on_the_native_images_as_they_need(bundle):
    """prealign_finish "auto" in every deformable bundle: the finish pays where the network's field is final,
    without the refinement. FIRE finished always before 0.22.0, when its 4 mm fit could miss a round head's turn;
    the search of eleven starts now settles that turn, and its fit goes on at 3 mm on the native images."""

    def finishes(**settings) -> bool:
        parser = ConfigParser(globals={"regplugins": regplugins, "torch": torch})
        parser.read_config([str(ROOT / "bundles/_shared/configs/inference_common.json"), str(ROOT / f"bundles/{bundle}/configs/inference.json")])
        for key, value in settings.items():
            parser[key] = value
        (align,) = [t for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, AffineAlignd)]
        return align.finish

    assert not finishes()
    assert finishes(refine_iterations=0) and finishes(prealign_finish="auto", refine_iterations=0)
    assert not finishes(prealign_finish="auto")
    assert finishes(prealign_finish="true") and not finishes(prealign_finish="false", refine_iterations=0)
    with pytest.raises(RuntimeError) as raised:  # MONAI's config error, the setting's own as its cause
        finishes(prealign_finish="maybe")
    assert "prealign_finish must be true or false" in str(raised.value.__cause__)
