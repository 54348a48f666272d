import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, Spacing, Spacingd

from regplugins.layers import apply_affine, voxel_grid
from regplugins.transforms import AntiAliasd, CropHeadd, Warpd
from regplugins.transforms.spatial import resampled_box


def image_at(spacing, shape=(32, 32, 32), seed=0):
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed)), affine=affine)


@pytest.mark.parametrize("anti_alias", [False, True])
def test_noise_averages_out_on_the_coarser_grid_only_with_anti_aliasing(anti_alias):
    data = {"image": image_at((1.5, 1.5, 1.5))}
    if anti_alias:
        data = AntiAliasd("image", pixdim=3.0)(data)
    coarse = Spacingd("image", pixdim=3.0)(data)["image"]
    assert coarse.shape[1:] == (16, 16, 16)
    # Spacingd alone keeps every other voxel with its full noise; averaging 2x2x2 voxels would halve it
    assert (coarse.std() < 0.55) if anti_alias else (coarse.std() > 0.9)


def test_axes_already_coarse_are_left_alone_and_each_axis_takes_its_ras_target():
    at_target = image_at((3.0, 3.0, 3.0))
    assert torch.equal(AntiAliasd("image", pixdim=3.0)({"image": at_target})["image"], at_target)
    # array axes running along RAS z (1 mm), y (2 mm) and x (1 mm), resampled to 3 x 3 x 6 mm
    permuted = torch.tensor([[0, 0, 1.0, 0], [0, -2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    sigma = AntiAliasd("image", pixdim=(3.0, 3.0, 6.0)).sigma(permuted)
    assert sigma == pytest.approx([35**0.5 / 2, 1.25**0.5 / 2, 8**0.5 / 2])


def test_anti_aliasing_smooths_as_monai_gaussian_smooth_and_keeps_the_image_meta():
    image = image_at((1.0, 2.0, 3.0), shape=(20, 18, 16))
    smoothed = AntiAliasd("image", pixdim=3.0)({"image": image})["image"]
    sigma = [8**0.5 / 2, 1.25**0.5 / 2, 0.0]  # the third axis is already at 3 mm
    assert torch.allclose(smoothed, GaussianSmooth(sigma=sigma)(image), atol=1e-6)
    assert not torch.equal(smoothed[..., 0], image[..., 0])
    assert torch.equal(smoothed.affine, image.affine)


def test_a_working_grid_field_warps_labels_on_their_own_finer_grid():
    """Validation at the labels' resolution: a field predicted on a 3 mm grid moves 1.5 mm labels by the same millimetres."""
    fine = torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0], dtype=torch.float64))
    labels = torch.randint(0, 5, (1, 32, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    working_image = MetaTensor(torch.zeros(2, 16, 16, 16), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64)))
    shift = torch.zeros(3, 16, 16, 16)
    shift[0] = 1.0  # one working voxel, 3 mm, along the first axis
    warp = Warpd("moving_label", ddf_key="pred", mode="nearest", reference_key="fixed_label", ddf_grid_key="image")
    data = {"image": working_image, "moving_label": MetaTensor(labels, affine=fine), "fixed_label": MetaTensor(torch.zeros_like(labels), affine=fine)}
    unmoved = warp({**data, "pred": torch.zeros_like(shift)})["moving_label_warped"]
    moved = warp({**data, "pred": shift})["moving_label_warped"]
    assert unmoved.shape == labels.shape and torch.equal(unmoved, labels)
    assert torch.equal(moved[:, :30], labels[:, 2:])  # two 1.5 mm voxels; the last two sample the border


@pytest.mark.parametrize("on_label_grid", [False, True])
def test_label_overlap_postprocessing_scores_a_shift_by_dice(on_label_grid):
    """The train configs' validation: labels warped by the predicted field, both one-hot, for MeanDice."""
    from monai.metrics import DiceMetric

    from regplugins.transforms import label_overlap_postprocessing

    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    labels = torch.zeros(1, 16, 16, 16)
    labels[:, 4:12, 4:12, 4:12] = 1.0
    shifted = torch.roll(labels, 2, dims=1)  # the fixed labels: two voxels further along the first axis
    field = torch.zeros(3, 16, 16, 16)
    keys = ("moving_label_full", "fixed_label_full") if on_label_grid else ("moving_label", "fixed_label")
    post = label_overlap_postprocessing(2, "cpu", label_keys=keys, on_label_grid=on_label_grid)
    data = {"image": MetaTensor(torch.zeros(2, 16, 16, 16), affine=affine), keys[0]: MetaTensor(labels, affine=affine)}
    data[keys[1]] = MetaTensor(shifted, affine=affine)
    dice = []
    for shift in (0.0, -2.0):  # a voxel samples the moving labels at its position plus the field
        field[0] = shift
        out = post({**data, "pred": field.clone()})
        assert out[f"{keys[0]}_warped"].shape == out["fixed_label_onehot"].shape == (2, 16, 16, 16)
        dice.append(float(DiceMetric(include_background=False)(out[f"{keys[0]}_warped"][None], out["fixed_label_onehot"][None])))
    assert dice[0] == pytest.approx(0.75) and dice[1] == pytest.approx(1.0)


def head_in_a_large_field_of_view():
    """A 40 x 50 x 30 mm box of 1.0 in a 96^3 field of view at 2 mm (air 0 with noise below the threshold), off centre."""
    image = 0.05 * torch.rand(1, 96, 96, 96, generator=torch.Generator().manual_seed(0))
    image[:, 30:50, 20:45, 50:65] = 1.0
    affine = torch.tensor([[0, 0, 2.0, -90], [-2.0, 0, 0, 80], [0, 2.0, 0, -70], [0, 0, 0, 1]], dtype=torch.float64)
    return MetaTensor(image, affine=affine)


def world_points_of(mask: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    return apply_affine(affine.double(), voxel_grid(mask.shape, dtype=torch.float64)[:, mask])


def test_the_head_crop_keeps_the_head_and_its_margin_on_a_grid_divisible_by_k():
    image = head_in_a_large_field_of_view()
    cropped = CropHeadd("fixed", margin=12.0, k_divisible=16)({"fixed": image})["fixed"]
    assert all(size % 16 == 0 for size in cropped.shape[1:]) and cropped.numel() < image.numel() / 4
    # the head's world points lie at least 12 mm inside the cropped grid, and the voxels there are the same
    head = world_points_of(image[0] > 0.5, image.affine)
    inside = apply_affine(torch.linalg.inv(cropped.affine.double()), head)
    lowest, highest = inside.min(1).values, inside.max(1).values
    assert (lowest >= 6 - 1e-6).all() and (highest <= torch.tensor(cropped.shape[1:]) - 1 - 6 + 1e-6).all()
    assert torch.equal(world_points_of(cropped[0] > 0.5, cropped.affine), head)


def test_a_grid_the_head_fills_is_only_padded_to_k():
    image = MetaTensor(torch.ones(1, 30, 33, 17), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64)))
    cropped = CropHeadd("fixed", k_divisible=16)({"fixed": image})["fixed"]
    assert cropped.shape[1:] == (32, 48, 32) and cropped.sum() == image.sum()


def test_the_refinement_grid_is_cut_to_the_working_grid_it_refines():
    image = head_in_a_large_field_of_view()
    image.affine = image.affine.double() @ torch.diag(torch.tensor([1.0, 1.1, 0.9, 1.0], dtype=torch.float64))  # not 1.5 mm along two axes
    working = CropHeadd("fixed", k_divisible=16)({"fixed": Spacing(pixdim=3.0)(image)})["fixed"]
    refinement_grid = Spacing(pixdim=1.5, mode="bilinear")(image)
    # only the cut grid is resampled
    cut = resampled_box(image, 1.5, working.affine, [0, 0, 0], [size - 1 for size in working.shape[1:]])
    assert cut.numel() < refinement_grid.numel() / 4
    # every working voxel lies inside the cut grid, and the cut grid's voxels are the whole refinement grid's
    points = apply_affine(torch.linalg.inv(cut.affine.double()) @ working.affine.double(), voxel_grid(working.shape[1:], dtype=torch.float64))
    assert (points.flatten(1).min(1).values >= 0).all()
    assert (points.flatten(1).max(1).values <= torch.tensor(cut.shape[1:]) - 1).all()
    start = torch.linalg.solve(refinement_grid.affine.double(), cut.affine.double())[:3, 3]
    assert torch.allclose(start, start.round(), atol=1e-6) and (start >= 0).all()
    a, b, c = start.round().long().tolist()
    same_voxels = refinement_grid[:, a : a + cut.shape[1], b : b + cut.shape[2], c : c + cut.shape[3]]
    assert torch.allclose(cut.as_tensor(), same_voxels.as_tensor(), atol=1e-4)
    assert torch.equal(world_points_of(cut[0] > 0.5, cut.affine), world_points_of(refinement_grid[0] > 0.5, refinement_grid.affine))
