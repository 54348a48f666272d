"""The refinement of a network's field on the pair itself, and the check that keeps the stage that aligns best."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch, SpatialCrop

from regplugins.alignment import affine_about, warp_affine
from regplugins.data import SyntheticPairGenerator
from regplugins.io import checked_settings
from regplugins.layers import ImageDomain, affine_to_ddf, apply_affine, sample_points, voxel_grid
from regplugins.metrics import folding_percent, jacobian_determinant
from regplugins.refinement import MOVING_GRID_OFFSET, PairSimilarity, _dilate, affine_beyond_moving, refine_ddf
from regplugins.transforms import AntiAliasd, NormalizeModalityd, RefineDisplacementd

SPACING = 2.0
SHAPE = (64, 64, 64)


def ct_t1_pair(deformation_mm: float = 4.0, moving_grid: str = "same", seed: int = 5) -> dict:
    """A CT-like moving and a T1-like fixed head at 2 mm, 64^3, apart by a smooth deformation only (no rigid motion).

    At 4 mm such a head shows too little structure for any similarity to find the deformation.
    """
    generator = SyntheticPairGenerator(
        shape=SHAPE, spacing=SPACING, rotation_deg=0.0, translation_mm=0.0, deformation_mm=deformation_mm, moving_grid=moving_grid
    )
    return NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(seed))


def head_error_mm(voxel_ddf: torch.Tensor, pair: dict) -> float:
    """Mean distance in mm inside the fixed head between a voxel DDF on the fixed grid and the true field."""
    head = pair["fixed_label"][0].as_tensor() > 0
    return (voxel_ddf * SPACING - pair["true_ddf"].as_tensor()).norm(dim=0)[head].mean().item()


@pytest.fixture(scope="module")
def pair():
    return ct_t1_pair()


@pytest.fixture(scope="module")
def similarity(pair):
    return PairSimilarity(pair["fixed"][0].as_tensor(), pair["moving"][0].as_tensor())


def test_refinement_lowers_the_dissimilarity_and_the_error_against_the_true_field(pair, similarity):
    start = torch.zeros(3, *SHAPE)
    refined = refine_ddf(similarity, start)
    assert similarity.score(refined) < similarity.score(start)
    before, after = head_error_mm(start, pair), head_error_mm(refined, pair)
    assert before > 2.0 and after < 0.6 * before


def test_refinement_gives_the_same_field_twice_and_the_start_with_no_iterations(similarity):
    start = torch.zeros(3, *SHAPE)
    assert torch.equal(refine_ddf(similarity, start, iterations=10), refine_ddf(similarity, start, iterations=10))
    assert refine_ddf(similarity, start, iterations=0) is start


def test_the_pair_is_compared_on_the_heads_box_whatever_air_surrounds_it(pair):
    """A head on a grid with more air around it gets the same features, voxels compared and dissimilarity."""
    padded = {pad: [torch.nn.functional.pad(pair[key][0].as_tensor(), [pad] * 6) for key in ("fixed", "moving")] for pad in (8, 16)}
    narrow, wide = (PairSimilarity(*images) for images in padded.values())
    assert narrow.shape == wide.shape and wide.shape.numel() < 0.5 * padded[16][0].numel()
    assert torch.equal(narrow.moving_features, wide.moving_features)
    # the same head voxels, 8 working voxels further on the wider grid
    assert torch.equal(narrow.working_points + 8, wide.working_points)
    fields = {pad: 0.5 * torch.ones(3, *[s + 2 * pad for s in SHAPE]) for pad in padded}
    assert narrow.score(fields[8]) == wide.score(fields[16])


def test_another_moving_copy_is_scored_on_the_same_grid_and_head_voxels_through_its_own_matrix(pair):
    """A moving copy taken to the grid through a matrix scores, read back through that matrix, as the moving image."""
    fixed, moving = (torch.nn.functional.pad(pair[key][0].as_tensor(), [8] * 6) for key in ("fixed", "moving"))
    similarity = PairSimilarity(fixed, moving)
    moved_on = torch.eye(4, dtype=torch.float64)
    moved_on[:3, 3] = torch.tensor([3.0, -2.0, 1.0])  # whole voxels: no interpolation between the two copies
    shifted = warp_affine(moving[None, None], moved_on)[0, 0]
    read_back, as_it_lies = similarity.with_moving(shifted, moved_on), similarity.with_moving(shifted)
    assert read_back.head is similarity.head and read_back.fixed_features is similarity.fixed_features
    field = 0.5 * torch.ones(3, *fixed.shape)
    assert read_back.score(field) == pytest.approx(similarity.score(field), rel=1e-6)
    assert as_it_lies.score(field) > 1.5 * similarity.score(field)
    assert torch.equal(similarity.moving_features, PairSimilarity(fixed, moving).moving_features)  # the first left as it was


def test_the_dissimilarity_and_its_written_out_gradient_are_the_measures_and_autograds(similarity):
    chosen = similarity.draw(2000, torch.Generator().manual_seed(0))
    displacement = (2.0 * torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))).requires_grad_()
    value = similarity(chosen, displacement)
    (gradient,) = torch.autograd.grad(value, displacement)
    # the measure through autograd: squared difference of the features, and mutual information of the intensities
    moved, kept = similarity.moved(chosen, displacement)
    warped = sample_points(similarity.moving_features.float(), moved)
    fixed = similarity.fixed_features.index_select(0, similarity.head.index_select(0, kept)).float()
    mutual_information = similarity.mutual_information(warped[None, :, -1:], fixed[None, :, -1:])
    expected = (warped[:, :-1] - fixed[:, :-1]).pow(2).mean() + similarity.mutual_information_weight * mutual_information
    (expected_gradient,) = torch.autograd.grad(expected, displacement)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(gradient, expected_gradient, atol=1e-3 * expected_gradient.abs().max().item())


def test_refinement_keeps_an_identical_pair_at_identity(pair):
    image = pair["fixed"][0].as_tensor()
    refined = refine_ddf(PairSimilarity(image, image), torch.zeros(3, *SHAPE))
    assert refined.abs().mean() < 0.02 and refined.abs().max() < 0.2  # voxels: Adam's steps on a flat optimum


def test_refinement_of_a_large_deformation_does_not_fold():
    pair = ct_t1_pair(deformation_mm=10.0, seed=6)
    similarity = PairSimilarity(pair["fixed"][0].as_tensor(), pair["moving"][0].as_tensor())
    start = torch.zeros(3, *SHAPE)
    refined = refine_ddf(similarity, start)
    assert head_error_mm(refined, pair) < 0.7 * head_error_mm(start, pair)
    affine = pair["fixed"].affine.numpy()
    assert folding_percent(jacobian_determinant(refined.numpy() * SPACING, affine)) == 0.0


def refinement_inputs(pair: dict, pred: torch.Tensor) -> dict:
    """What the bundles' post-processing holds for one pair: working grid = the fixed grid here."""
    native = {
        key: MetaTensor(pair[key].as_tensor(), affine=pair[key].affine, meta={"filename_or_obj": f"{key}.nii.gz"}) for key in ("fixed", "moving")
    }
    return {
        "pred": pred,
        "native_fixed": native["fixed"],
        "native_moving": native["moving"],
        "fixed": native["fixed"],
        "prealign_matrix": torch.eye(4),
    }


def test_refinement_of_a_moving_image_on_another_grid_keeps_the_refined_field_and_records_each_stage():
    pair = ct_t1_pair(moving_grid="random", seed=7)
    assert not torch.allclose(pair["moving"].affine, pair["fixed"].affine)  # another orientation and spacing
    refine = RefineDisplacementd(spacing=SPACING)
    out = refine(refinement_inputs(pair, torch.zeros(3, *SHAPE)))
    # 0.60 of the start's error with 8k or 16k samples a step, 0.62 with 12k: the draws' noise at 64^3
    assert head_error_mm(out["pred"], pair) < 0.65 * head_error_mm(torch.zeros(3, *SHAPE), pair)
    quality = out["quality"]
    assert quality["kept"] == "refinement" and quality["refined_from"] == "network"  # a zero network field ties with none
    assert quality["dissimilarity"]["refinement"] < quality["dissimilarity"]["network"]


def test_the_moving_copies_are_the_native_moving_image_resampled_through_each_prealignment_as_monai_resamples():
    """Each copy on the refinement grid (moved by MOVING_GRID_OFFSET) is MONAI's ResampleToMatch of the moving image
    whose header the pre-alignment moved: one grid_sample from a composed voxel matrix gives the same values."""
    pair = ct_t1_pair(moving_grid="random", seed=7)
    inputs = refinement_inputs(pair, torch.zeros(3, *SHAPE))
    turn = affine_about(
        torch.tensor([0.05, -0.08, 0.1], dtype=torch.float64),
        torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64),
        torch.full((3,), 31.5, dtype=torch.float64),
    )
    matrices = [turn, torch.eye(4, dtype=torch.float64)]
    refine = RefineDisplacementd(spacing=SPACING)
    copies = refine.pair_similarity(inputs, [inputs["pred"]], matrices)
    offset = torch.eye(4, dtype=torch.float64)
    offset[:3, 3] = MOVING_GRID_OFFSET
    destination = inputs["native_fixed"].clone()
    destination.affine = inputs["native_fixed"].affine.double() @ offset
    grid = inputs["native_fixed"].affine.double()
    for copy, matrix in zip(copies, matrices):
        moved = AntiAliasd("moving", pixdim=SPACING)({"moving": inputs["native_moving"]})["moving"]
        moved.affine = grid @ torch.linalg.inv(matrix) @ torch.linalg.inv(grid) @ moved.affine.double()
        expected = ResampleToMatch(mode="bilinear", padding_mode="zeros")(moved, img_dst=destination)[0].as_tensor().float()
        assert (copy.moving_features[..., -1] - expected[copy.crop]).abs().max() < 1e-4


def test_the_refinements_step_is_in_millimetres_whatever_the_working_grid(pair):
    """One Adam step a level moves the field as far in mm on a 2 mm and on a 4 mm working grid."""
    reach_mm = {}
    for factor in (1, 2):
        inputs = refinement_inputs(pair, torch.zeros(3, *[s // factor for s in SHAPE]))
        affine = pair["fixed"].affine.clone()
        affine[:3, :3] *= factor
        affine[:3, 3] += (factor - 1) / 2 * SPACING  # the coarse grid's voxel centres, as average pooling makes them
        inputs["fixed"] = MetaTensor(torch.zeros(1, *[s // factor for s in SHAPE]), affine=affine)
        out = RefineDisplacementd(spacing=SPACING, iterations=1, step=0.5)(inputs)
        assert out["quality"]["kept"] == "refinement"
        reach_mm[factor] = out["pred"].abs().amax().item() * SPACING * factor
    # one step of 0.5 mm at each of the two levels, smoothed: at most 1 mm; 0.1 working voxels would differ twofold
    assert 0.6 < reach_mm[1] <= 1.0 and 0.6 < reach_mm[2] <= 1.0
    assert reach_mm[2] == pytest.approx(reach_mm[1], rel=0.25)


def test_a_network_field_worse_than_its_start_is_discarded_and_reported(pair, caplog):
    wrong = torch.zeros(3, *SHAPE)
    wrong[0] = 6.0  # 12 mm off along one axis: a broken checkpoint's field
    with caplog.at_level(logging.WARNING):
        out = RefineDisplacementd(spacing=SPACING, iterations=0)(refinement_inputs(pair, wrong))
    assert out["quality"]["kept"] in ("none", "prealignment") and torch.equal(out["pred"], torch.zeros(3, *SHAPE))
    assert "the network left the images less similar" in caplog.text
    # refined, it starts from the better stage, not from the wrong field
    out = RefineDisplacementd(spacing=SPACING)(refinement_inputs(pair, wrong))
    assert out["quality"]["refined_from"] != "network" and head_error_mm(out["pred"], pair) < head_error_mm(torch.zeros(3, *SHAPE), pair)


def test_bad_refinement_settings_stop_with_one_clear_error():
    with pytest.raises(ValueError, match="refine_iterations"):
        RefineDisplacementd(iterations=-1)
    with pytest.raises(ValueError, match="mind_ssc"):
        RefineDisplacementd(similarity="mutual")
    for settings, message in [
        ({"refine_iterations": -1}, "error: refine_iterations: -1 is not a whole number"),
        ({"refine_iterations": 2.5}, "error: refine_iterations"),
        ({"refine_similarity": "mutual"}, "error: refine_similarity: 'mutual' is not one of mind_ssc, mind, ncc."),
        ({"prealign": "syn"}, "error: prealign: 'syn' is not one of none, rigid, affine."),
        ({"ddf_spacing": -2.0}, r"error: ddf_spacing: -2.0 is not 0 \(the fixed grid\) or a spacing in mm."),
        ({"ddf_spacing": "3mm"}, "error: ddf_spacing: '3mm'"),
        ({"prealign_finish": "maybe"}, "error: prealign_finish: 'maybe' is not true, false or auto."),
        ({"prealign_search": "yes"}, "error: prealign_search: 'yes' is not true or false."),
        ({"refine_step": 0}, r"error: refine_step: 0 is not a step in mm \(more than 0, at most 10\)."),
        ({"refine_step": "0.3mm"}, "error: refine_step: '0.3mm'"),
    ]:
        with pytest.raises(SystemExit, match=message):
            checked_settings(**settings)
    assert checked_settings("affine", 30, "mind_ssc", 3.0, "auto", 0.3) and checked_settings(ddf_spacing=0, prealign_finish=False)


def test_sampled_similarity_agrees_with_its_whole_image_form(pair, similarity):
    """The score at sampled voxels estimates the features' mean squared difference over the head."""
    features = [similarity.fixed_features, similarity.moving_features.flatten(0, -2)]
    head = similarity.head
    exact = (features[1][head, :-1] - features[0][head, :-1]).pow(2).mean().item()
    plain = PairSimilarity(pair["fixed"][0].as_tensor(), pair["moving"][0].as_tensor(), mutual_information_weight=0.0)
    assert np.isclose(plain.score(torch.zeros(3, *SHAPE), num_samples=200_000), exact, rtol=0.02)


def test_similarity_leaves_out_what_lies_outside_the_moving_image():
    # the same head as CT-like and T1-like images, aligned; the moving image stops 40 % of the way up the head
    pair = ct_t1_pair(deformation_mm=0.0)
    fixed, moving = pair["fixed"][0].as_tensor(), pair["moving"][0].as_tensor()
    rows = torch.nonzero(moving.flatten(0, 1).amax(0) > 0.1)[:, 0]
    cut = int(rows.min() + 0.4 * (rows.max() - rows.min()))
    cut_moving = moving.clone()
    cut_moving[:, :, :cut] = 0
    source_grid = torch.eye(4, dtype=torch.float64)
    source_grid[2, 3] = -cut
    identity = torch.zeros(3, *SHAPE)
    whole = PairSimilarity(fixed, moving).score(identity)
    # the padding taken for air: the aligned pair looks far less similar than it is
    assert PairSimilarity(fixed, cut_moving).score(identity) > 2 * whole
    # told where the moving image has data, the comparison is that of the part it shows
    assert PairSimilarity(fixed, cut_moving, moving_domain=ImageDomain(source_grid, (64, 64, 64 - cut))).score(identity) < 1.3 * whole
    # a field that leaves almost nothing to compare scores worse than any other
    assert PairSimilarity(fixed, cut_moving, moving_domain=ImageDomain(source_grid, (64, 64, 1))).score(identity) == float("inf")


def test_the_field_beyond_a_moving_image_that_shows_part_of_the_head_is_the_affine_of_the_part_it_shows():
    # a rigid motion (an affine true field); the moving image stops 40 % of the way up the head
    generator = SyntheticPairGenerator(shape=SHAPE, spacing=SPACING, rotation_deg=6.0, translation_mm=4.0, deformation_mm=0.0)
    pair = NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(3))
    rows = torch.nonzero(pair["moving"][0].flatten(0, 1).amax(0) > 0.1)[:, 0]
    cut = int(rows.min() + 0.4 * (rows.max() - rows.min()))
    inputs = refinement_inputs(pair, torch.zeros(3, *SHAPE))
    inputs["native_moving"] = SpatialCrop(roi_start=(0, 0, cut), roi_end=SHAPE)(inputs["native_moving"])
    grid = pair["fixed"].affine.double()
    inputs["prealign_matrix"] = torch.linalg.inv(grid) @ pair["true_affine"].double() @ grid  # the truth, in voxels
    inputs["prealign_matrix"][:3, 3] += 1.0  # 2 mm off along each axis
    true = pair["true_ddf"].as_tensor() / SPACING  # voxels: the fixed grid is 2 mm, axis-aligned
    moving_row = voxel_grid(SHAPE)[2] + true[2]
    # the network's field: right over the part the moving image shows, 8 mm off beyond it (an extrapolation)
    network = true.clone()
    network[0] += 4.0 * (moving_row < cut - 1)
    head = pair["fixed_label"][0].as_tensor() > 0
    covered, beyond = head & (moving_row >= cut), head & (moving_row < cut - 11)  # 10 voxels of blend
    inputs["pred"] = network
    # with no refinement the network's field is written as it is (the paper's feed-forward network)
    as_is = RefineDisplacementd(spacing=SPACING, iterations=0)(dict(inputs))
    assert as_is["quality"]["kept"] == "network" and as_is["quality"]["moving_covers"] is None and torch.equal(as_is["pred"], network)
    refine = RefineDisplacementd(spacing=SPACING)
    (pair_similarity,) = refine.pair_similarity(inputs, [network], [inputs["prealign_matrix"]])
    field, covers = affine_beyond_moving(pair_similarity, network, inputs["prealign_matrix"], blend=10, ridge=6.25)
    assert 0.4 < covers < 0.9
    assert torch.allclose(field[:, covered], network[:, covered])  # what the moving image shows stays as it was
    assert (network - true).norm(dim=0)[beyond].mean() > 3.9 and (field - true).norm(dim=0)[beyond].mean() < 0.1
    # refined (the bundles' default), the field beyond the data follows the affine of the refined field, not the network's
    refined, extrapolated = (RefineDisplacementd(spacing=SPACING, beyond_moving_blend=blend)(dict(inputs)) for blend in (20.0, 0.0))
    assert abs(refined["quality"]["moving_covers"] - covers) < 0.1 and extrapolated["quality"]["moving_covers"] is None
    beyond_error = [(out["pred"] - true).norm(dim=0)[beyond].mean() for out in (refined, extrapolated)]
    assert beyond_error[0] < 0.6 * beyond_error[1]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dilation_is_max_pooling_over_a_cube(spatial_dims):
    mask = (torch.rand(1, 1, *[23, 17, 19][:spatial_dims], generator=torch.Generator().manual_seed(0)) > 0.97).float()
    pool = (torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d)[spatial_dims - 2]
    for margin in (1, 3):
        assert torch.equal(_dilate(mask, margin), pool(mask, 2 * margin + 1, stride=1, padding=margin))


def test_adam_takes_torch_adam_steps_without_importing_dynamo():
    """The per-pair fits' Adam: torch.optim.Adam's parameters after a scheduled run, bit for bit, and no torch._dynamo
    import (torch.optim's first optimiser costs 1.3 s for it). A child process, so that no other test's import counts."""
    script = """
import sys, torch
from regplugins.optimizers import Adam

def fit(optimizer, schedule):
    for i in range(40):
        optimizer.zero_grad()
        ((a - target) ** 2).sum().add((b @ b).trace().sin().double()).backward()
        schedule(optimizer, i)
    return a.detach().clone(), b.detach().clone()

def start():
    global a, b, target
    torch.manual_seed(0)
    a, b = torch.randn(5, dtype=torch.float64, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    target = torch.randn(5, dtype=torch.float64)
    return [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}]

ours = fit(Adam(start()), lambda optimizer, i: optimizer.step(lr_scale=1.0 - 0.9 * i / 40))
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
reference = torch.optim.Adam(start())
scheduler = torch.optim.lr_scheduler.LambdaLR(reference, lambda step: 1.0 - 0.9 * step / 40)
theirs = fit(reference, lambda optimizer, i: (optimizer.step(), scheduler.step()))
moved = float((ours[0] - start()[0]["params"][0].detach()).abs().max())
print(all(torch.equal(x, y) for x, y in zip(ours, theirs)), moved > 0.1)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["no dynamo", "True True"]


def test_a_head_turned_28_degrees_refines_from_its_pre_alignment_as_a_head_not_turned():
    # MIND-SSC compares structure along the grid's axes: features of the moving image as it lies, turned 28 degrees,
    # pulled the field away from the truth (3.5 -> 4.6 mm); computed on the pre-aligned image, the refinement gains
    generator = SyntheticPairGenerator(shape=SHAPE, spacing=SPACING, rotation_deg=25.0, translation_mm=4.0, deformation_mm=4.0)
    pair = NormalizeModalityd(["fixed", "moving"], modality=["t1", "ct"])(generator(0))
    grid = pair["fixed"].affine.double()
    matrix = torch.linalg.inv(grid) @ pair["true_affine"].double() @ grid  # the pre-alignment: the true affine
    assert torch.rad2deg(torch.arccos((torch.trace(matrix[:3, :3]) - 1) / 2)) > 25.0
    start = affine_to_ddf(matrix[None], SHAPE)[0].float()
    inputs = refinement_inputs(pair, start)
    inputs["prealign_matrix"] = matrix
    refined = RefineDisplacementd(spacing=SPACING)(inputs)
    assert refined["quality"]["kept"] == "refinement"
    assert head_error_mm(refined["pred"], pair) < 0.95 * head_error_mm(start, pair)


def test_a_field_a_quarter_voxel_off_an_aligned_pair_does_not_win_the_quality_check():
    # read at the voxels themselves, the moving features keep all their noise: the aligned pair scored less similar
    # than the same pair a quarter of a voxel (0.5 mm) off, and the check kept the field that was off
    pair = ct_t1_pair(deformation_mm=0.0)
    inputs = refinement_inputs(pair, torch.full((3, *SHAPE), 0.25))
    checked = RefineDisplacementd(spacing=SPACING, iterations=0)(inputs)
    assert checked["quality"]["kept"] == "prealignment"
    assert torch.equal(checked["pred"], torch.zeros(3, *SHAPE))


def turned_about_centre(degrees: float) -> torch.Tensor:
    """The voxel matrix of a turn in the plane of the first two axes about the centre of a ``SHAPE`` grid."""
    centre = (torch.tensor(SHAPE, dtype=torch.float64) - 1) / 2
    return affine_about(torch.tensor([0.0, 0.0, np.radians(degrees)], dtype=torch.float64), torch.zeros(3, dtype=torch.float64), centre)


def test_a_pre_alignment_turned_the_wrong_way_loses_the_quality_check_to_the_images_as_they_lie():
    # scored through the pre-aligned copy, whose features turn with it, no registration 6 degrees off scored worse
    # than a pre-alignment 8 degrees the other way (0.046 > 0.045) and the check kept the wrong turn
    pair = ct_t1_pair(deformation_mm=0.0)
    pair["moving"] = MetaTensor(warp_affine(pair["moving"].as_tensor()[None], turned_about_centre(6.0))[0], affine=pair["moving"].affine)
    scores = {}
    for degrees in (0.0, 14.0):  # the truth is a turn of -6 degrees
        matrix = turned_about_centre(-degrees)
        inputs = refinement_inputs(pair, affine_to_ddf(matrix[None], SHAPE)[0].float())
        inputs["prealign_matrix"] = matrix
        scores[degrees] = RefineDisplacementd(spacing=SPACING, iterations=0)(inputs)["quality"]
    assert scores[14.0]["kept"] == "none"
    # the images as they lie whatever the pre-alignment, on the head voxels of the pre-aligned pair (within 1 % here)
    assert scores[14.0]["dissimilarity"]["none"] == pytest.approx(scores[0.0]["dissimilarity"]["none"], rel=0.02)


def test_a_pair_pre_aligned_by_a_turn_refines_as_the_same_pair_not_turned():
    # the diffusion penalty on the whole field pulled a turned field's residual at the grid's edges: refined from a
    # pre-alignment turned 120 degrees, the pair ended 14 % less similar and 19 % further from the truth than unturned
    pair = ct_t1_pair()
    fixed, moving = pair["fixed"][0].as_tensor(), pair["moving"][0].as_tensor()
    grid = voxel_grid(SHAPE).flatten(1).double()
    results = {}
    for degrees in (0.0, 120.0):
        matrix = turned_about_centre(degrees)  # the moving image as pre-aligned by that turn
        similarity = PairSimilarity(fixed, moving, moving_matrix=matrix)
        refined = refine_ddf(similarity, affine_to_ddf(matrix[None], SHAPE)[0].float())
        unturned = apply_affine(torch.linalg.inv(matrix), grid + refined.flatten(1).double()) - grid
        results[degrees] = similarity.score(refined), head_error_mm(unturned.reshape(3, *SHAPE).float(), pair)
    assert results[120.0][0] == pytest.approx(results[0.0][0], rel=0.03)
    assert results[120.0][1] == pytest.approx(results[0.0][1], rel=0.1)
