import math

import pytest
import torch

from regplugins.alignment import affine_about
from regplugins.layers import (
    GradientMagnitude,
    ImageDomain,
    affine_to_ddf,
    affine_values,
    apply_affine,
    cached_warp,
    compose_ddf,
    ddf_affine,
    ddf_to_physical,
    fit_affine_to_points,
    in_float32,
    invert_ddf,
    resample_ddf,
    sample,
    sample_affine,
    sample_points,
    sample_with_gradient,
    soft_argmax_points,
    voxel_grid,
    warp_physical,
)
from regplugins.layers.spatial import axis_sources


def smooth_field(shape, amplitude, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *[4] * len(shape), generator=generator)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return amplitude * torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)


def test_warp_by_zero_field_is_identity():
    image = torch.rand(1, 1, 12, 10, 8)
    warped = cached_warp()(image, torch.zeros(1, 3, 12, 10, 8))
    assert torch.allclose(warped, image, atol=1e-5)


def test_sample_at_voxel_grid_is_identity_and_shift_moves_by_one_voxel():
    image = torch.rand(1, 2, 9, 7)
    grid = voxel_grid((9, 7))[None]
    assert torch.allclose(sample(image, grid), image, atol=1e-5)
    shifted = sample(image, grid + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    assert torch.allclose(shifted[:, :, :-1], image[:, :, 1:], atol=1e-5)


def test_sample_like_itk_keeps_the_edge_half_voxel_and_decides_it_in_double_precision():
    from regplugins.layers import sample_like_itk

    volume = torch.arange(1.0, 6.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 2).contiguous()
    edge = 0.5 - 1e-9  # half a voxel beyond the first voxel's centre, give or take what float32 cannot tell
    along = torch.tensor([-0.5, -edge, -0.5 - 1e-9, 4.49, 4.5, -0.7], dtype=torch.float64)
    points = torch.stack([along, torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)]).view(1, 3, 6, 1, 1)
    values = sample_like_itk(volume, points)[0, 0, :, 0, 0]
    # inside [-0.5, 4.5): the edge voxel repeated; outside: 0, as ITK's resampler gives
    assert values.tolist() == [1.0, 1.0, 0.0, 5.0, 0.0, 0.0]
    assert sample_like_itk(volume, points, mode="nearest")[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 0.0, 5.0, 0.0, 0.0]


def test_affine_values_are_the_matrix_applied_to_every_voxel():
    matrix = affine_about(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([2.0, -1.0, 0.5]), torch.tensor([4.0, 5.0, 3.0])).double()
    expected = apply_affine(matrix, voxel_grid((9, 11, 7), dtype=torch.float64))
    assert torch.allclose(affine_values(matrix, (9, 11, 7)), expected, atol=1e-12)
    square = torch.tensor([[0.0, -1.0, 5.0], [1.0, 0.0, -2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(affine_values(square, (3, 4)), apply_affine(square, voxel_grid((3, 4), dtype=torch.float64)))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_sample_affine_between_grids_of_one_orientation_is_sample_one_axis_at_a_time(padding_mode):
    volume = torch.rand(2, 3, 9, 11, 7)
    # target axes 0, 1, 2 along source axes 1 (flipped), 2 and 0, finer, shifted so that the grid reaches past the source
    permuted = torch.tensor([[0, 0, 0.7, -1.5], [-0.6, 0, 0, 12.0], [0, 0.8, 0, -0.9], [0, 0, 0, 1]], dtype=torch.float64)
    turned = permuted.clone()
    turned[:3, :3] = permuted[:3, :3] @ affine_about(torch.tensor([0.0, 0.0, 0.2]), torch.zeros(3), torch.zeros(3))[:3, :3].double()
    rounded = permuted + 1e-9 * (permuted[:4, :4] == 0)  # the rounding of two headers' directions
    shape = (10, 14, 13)
    # separable, and through grid_sample
    assert axis_sources(permuted, shape) == axis_sources(rounded, shape) == [1, 2, 0] and axis_sources(turned, shape) is None
    for matrix in (permuted, turned, permuted.float(), rounded):
        points = apply_affine(matrix, voxel_grid(shape, dtype=matrix.dtype)).to(volume.dtype)
        expected = sample(volume, points.expand(2, *points.shape), padding_mode=padding_mode)
        assert torch.allclose(sample_affine(volume, matrix, shape, padding_mode=padding_mode), expected, atol=1e-5)
    # nearest neighbours, and the reach beyond the source along each axis, as grid_sample takes them
    nearest = sample_affine(volume, permuted, shape, mode="nearest")
    points = apply_affine(permuted, voxel_grid(shape, dtype=torch.float64)).float()
    assert torch.equal(nearest, sample(volume, points.expand(2, *points.shape), mode="nearest"))
    assert (sample_affine(volume, permuted, shape, padding_mode=padding_mode)[:, :, 0] == 0).all() == (padding_mode == "zeros")


def test_sample_points_is_sample_with_border_padding_and_differentiable_in_both_arguments():
    volume = torch.rand(3, 9, 7, 8, dtype=torch.float64, requires_grad=True)
    # points inside, on the edges and outside the grid
    points = (torch.rand(3, 50, dtype=torch.float64) * torch.tensor([12.0, 10.0, 11.0], dtype=torch.float64).view(3, 1) - 1.5).requires_grad_()
    expected = sample(volume[None], points.view(1, 3, 50, 1, 1), padding_mode="border").view(3, 50).T
    assert torch.allclose(sample_points(volume.movedim(0, -1), points), expected, atol=1e-10)
    assert torch.autograd.gradcheck(lambda v, p: sample_points(v.movedim(0, -1), p), (volume, points.detach().clamp(0.1, 6.9).requires_grad_()))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_sample_with_gradient_gives_the_values_of_sample_and_their_derivatives(padding_mode):
    for shape in ((9, 7, 8), (11, 6)):
        n = len(shape)
        volume = torch.rand(*shape, 2, dtype=torch.float64)
        # points inside, on the edges and outside the grid (zeros: the corners beyond it count as 0; border: clamped)
        extent = torch.tensor(shape, dtype=torch.float64).view(n, 1) + 3.0
        points = (torch.rand(n, 200, dtype=torch.float64) * extent - 1.5).requires_grad_()
        channels_first = volume.movedim(-1, 0)[None]
        expected = sample(channels_first, points.view(1, n, 200, *[1] * (n - 1)), padding_mode=padding_mode).view(2, 200).T
        expected_gradient = torch.stack([torch.autograd.grad(expected[:, c].sum(), points, retain_graph=True)[0] for c in range(2)], -1)
        values, pull = sample_with_gradient(volume, points.detach(), padding_mode=padding_mode)
        assert torch.allclose(values, expected, atol=1e-10)
        value_gradient = torch.rand(200, 2, dtype=torch.float64)  # of some loss, with respect to the values
        gradient = pull(value_gradient)
        assert torch.allclose(gradient, (expected_gradient * value_gradient).sum(-1), atol=1e-10)
        assert gradient.abs().sum() > 0 and (gradient == 0).any()  # outside: no pull
    with pytest.raises(ValueError, match="padding_mode"):
        sample_with_gradient(volume, points.detach(), padding_mode="reflection")


def test_field_composed_with_its_inverse_is_near_zero():
    # the inverse of exp(v) is exp(-v): integrate both with MONAI and compose
    from monai.networks.blocks import DVF2DDF

    velocity = smooth_field((24, 24, 24), amplitude=1.5)
    integrate = DVF2DDF(num_steps=7)
    forward, backward = integrate(velocity), integrate(-velocity)
    composed = compose_ddf(forward, backward)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert forward.abs().max() > 1.0
    assert composed[interior].abs().mean() < 0.02
    assert composed[interior].abs().max() < 0.1 * forward.abs().max()
    # adding the two is not the same thing: it leaves a far larger residual
    assert (forward + backward)[interior].abs().mean() > 5 * composed[interior].abs().mean()
    # the fixed-point inverse of the forward field composes with it to the identity, closer than the integrated one
    inverse = invert_ddf(forward)
    assert compose_ddf(forward, inverse)[interior].abs().mean() < 0.2 * composed[interior].abs().mean()
    assert (inverse - backward)[interior].abs().mean() < 0.05
    # stopping once an iteration moves no voxel by more than the tolerance changes it by about that much
    assert (inverse - invert_ddf(forward, tolerance=0.0)).abs().max() < 0.01


def turn_about_centre(degrees, size):
    """Voxel matrix of a turn about the z axis through the centre of a ``size``^3 grid."""
    rotation = torch.tensor([0.0, 0.0, math.radians(degrees)], dtype=torch.float64)
    return affine_about(rotation, torch.zeros(3, dtype=torch.float64), torch.full((3,), (size - 1) / 2, dtype=torch.float64))


@pytest.mark.parametrize("degrees", [30, 150])
def test_inverse_of_a_field_turned_half_a_turn_composes_with_it_to_the_identity(degrees):
    # a pre-alignment's turn after a smooth deformation, as FIRE's forward field on a head turned any way; iterated on
    # the whole field the inverse diverges beyond about 60 degrees (19 voxels off at 70 on a 32^3 grid)
    size = 32
    turn = turn_about_centre(degrees, size)
    forward = compose_ddf(affine_to_ddf(turn[None], (size,) * 3).float(), smooth_field((size,) * 3, amplitude=1.0))
    assert torch.allclose(ddf_affine(affine_to_ddf(turn[None], (size,) * 3)), turn[None], atol=1e-9)
    inverse = invert_ddf(forward)
    ball = ((voxel_grid((size,) * 3) - (size - 1) / 2) ** 2).sum(0) < 10**2  # points whose inverse stays on the grid
    assert compose_ddf(forward, inverse).norm(dim=1)[0][ball].max() < 1e-3
    assert compose_ddf(inverse, forward).norm(dim=1)[0][ball].mean() < 0.05  # the interpolation of the inverse


def test_affine_to_ddf_translation_and_rotation():
    translation = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -3.0]]])
    ddf = affine_to_ddf(translation, (5, 6))
    assert torch.allclose(ddf[0, 0], torch.full((5, 6), 2.0))
    assert torch.allclose(ddf[0, 1], torch.full((5, 6), -3.0))
    angle = math.radians(90)
    rotation = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]])
    ddf = affine_to_ddf(rotation, (4, 4))
    # voxel (1, 0) goes to (0, 1)
    assert torch.allclose(ddf[0, :, 1, 0], torch.tensor([-1.0, 1.0]), atol=1e-6)


def test_resample_ddf_converts_units_and_grids():
    # a constant 1-voxel shift on a 2 mm grid is 2 mm everywhere on any other grid
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 0] = 1.0
    source = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    target = torch.tensor([[0, -1.0, 0, 10], [1.0, 0, 0, 2], [0, 0, 1.0, 3], [0, 0, 0, 1]], dtype=torch.float64)
    field = resample_ddf(ddf, source, target, (5, 6, 7))
    assert field.shape == (1, 3, 5, 6, 7)
    assert torch.allclose(field[:, 0], torch.full((1, 5, 6, 7), 2.0))
    assert torch.allclose(field[:, 1:], torch.zeros(1, 2, 5, 6, 7))
    assert torch.allclose(ddf_to_physical(ddf, source)[:, 0], torch.full((1, 8, 8, 8), 2.0))


def test_resample_ddf_goes_on_beyond_the_source_grid_as_the_fields_turn():
    # a half turn on an 8^3 grid at 2 mm, read on a grid three times as wide: exact everywhere, where the border's
    # displacement repeated would send the points beyond the edge the wrong way
    size, turn = 8, turn_about_centre(150, 8)
    ddf = affine_to_ddf(turn[None], (size,) * 3).float()
    source = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    target = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    target[:3, 3] = -16.0
    field = resample_ddf(ddf, source, target, (12, 12, 12))
    world = apply_affine(target, voxel_grid((12,) * 3, dtype=torch.float64))
    expected = apply_affine(source @ turn @ torch.linalg.inv(source), world) - world
    assert (field[0].double() - expected).abs().max() < 1e-4
    # inside the source grid it is the field's own linear interpolation, deformation and all
    bumped = ddf + smooth_field((size,) * 3, amplitude=0.5)
    inside = resample_ddf(bumped, source, source, (size,) * 3)
    assert torch.allclose(inside, ddf_to_physical(bumped, source), atol=1e-4)


def test_warp_physical_translation_between_grids():
    # a ramp along world x, resampled through a +3 mm x field, reads 3 mm further along the ramp
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    ramp = torch.arange(20, dtype=torch.float32).view(20, 1, 1).expand(20, 6, 6).clone()[None, None]
    field = torch.zeros(1, 3, 10, 6, 6)
    field[:, 0] = 3.0
    warped = warp_physical(ramp, affine, field, affine)
    assert torch.allclose(warped[0, 0, :, 2, 2], torch.arange(3, 13, dtype=torch.float32))


def test_gradient_magnitude_of_a_ramp_is_its_slope():
    ramp = (2.0 * torch.arange(10.0)).view(1, 1, 10, 1, 1).expand(1, 1, 10, 5, 5)
    magnitude = GradientMagnitude(spatial_dims=3)(ramp)
    assert magnitude.shape == ramp.shape
    assert torch.allclose(magnitude[0, 0, :-1], torch.full((9, 5, 5), 2.0), atol=1e-4)
    flat = GradientMagnitude(spatial_dims=2)(torch.ones(1, 1, 6, 6))
    assert flat.abs().max() < 1e-4


def test_soft_argmax_of_peaked_heat_maps_is_their_peaks_in_normalized_coordinates():
    heatmaps = torch.full((1, 2, 5, 9), -50.0)
    heatmaps[0, 0, 0, 0] = heatmaps[0, 1, 3, 6] = 50.0
    points = soft_argmax_points(heatmaps)
    assert torch.allclose(points, torch.tensor([[[-1.0, -1.0], [0.5, 0.5]]]), atol=1e-5)
    # flat heat maps average the whole grid: its centre
    assert torch.allclose(soft_argmax_points(torch.zeros(1, 3, 4, 6, 8)), torch.zeros(1, 3, 3), atol=1e-6)


def test_fit_affine_recovers_the_affine_between_points_and_is_the_identity_for_points_that_do_not_spread():
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(2, 12, 3, generator=generator) * 2 - 1
    angle = math.radians(8.0)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0, 0.1], [math.sin(angle), math.cos(angle), 0.0, -0.2], [0.0, 0.05, 1.1, 0.0]])
    target = source @ theta[:, :3].T + theta[:, 3]
    assert torch.allclose(fit_affine_to_points(source, target, ridge=1e-6), theta.expand(2, -1, -1), atol=1e-4)
    # every point at one place: no spread to fit a linear part to, so only the shift between the two sets
    shift = torch.tensor([0.3, 0.0, -0.1])
    fitted = fit_affine_to_points(torch.zeros(1, 12, 3), shift.expand(1, 12, 3))
    assert torch.allclose(fitted, torch.cat([torch.eye(3), shift[:, None]], dim=1)[None])


def test_in_float32_computes_in_float32_under_autocast_keeps_float64_and_changes_nothing_without_autocast():
    product = in_float32(torch.matmul)
    a = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    in_float32_outside_autocast = a @ a
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16  # what autocast would do to a coordinate product
        assert torch.equal(product(a, a), in_float32_outside_autocast)
        assert product(a.bfloat16(), a).dtype == torch.float32
        assert product(a.double(), a.double()).dtype == torch.float64
    assert product(a.bfloat16(), a.bfloat16()).dtype == torch.bfloat16  # no autocast: the function as it is


def test_image_domain_takes_itks_rule_for_inside_and_keeps_a_margin_clear_of_the_edges():
    # a source grid of 10 x 20 x 30 voxels of 2 mm, seen from a grid of 1 mm voxels shifted by 4 mm along the first axis
    source_affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    grid_affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    grid_affine[0, 3] = 4.0
    domain = ImageDomain.between(grid_affine, source_affine, (10, 20, 30))
    # source voxel x = (p + 4) / 2: inside for x in [-0.5, 9.5), i.e. p in [-5, 15)
    points = torch.tensor([[-5.0, -5.01, 14.99, 15.0], [0.0] * 4, [0.0] * 4])
    assert domain.contains(points).tolist() == [True, False, True, False]
    # a margin of 2 grid voxels is 1 source voxel along every axis: p in [-3, 13) (and away from the other axes' edges)
    points = torch.tensor([[-3.0, -3.01, 12.99, 13.0], [5.0] * 4, [5.0] * 4])
    assert domain.contains(points, margin=2.0).tolist() == [True, False, True, False]
