"""Layers that MONAI lacks for registration: field composition, affines, unit conversions, normalised fields,
gradient maps, field fusion, keypoints and their affine fit, a fast Gaussian smoothing, and coordinates kept in
float32 under mixed precision."""

from .fusion import GatedFusion
from .gradient import GradientMagnitude
from .keypoints import soft_argmax_points
from .normalized import normalized_affine_flow, normalized_grid, normalized_to_voxel, resize_normalized, warp_normalized
from .precision import in_float32
from .smoothing import gaussian_smooth
from .spatial import (
    ImageDomain,
    affine_to_ddf,
    affine_values,
    apply_affine,
    cached_warp,
    compose_ddf,
    ddf_affine,
    ddf_to_physical,
    fit_affine_to_points,
    invert_ddf,
    jacobian_determinant,
    physical_sample_points,
    resample_ddf,
    round_trip,
    sample,
    sample_affine,
    sample_like_itk,
    sample_points,
    sample_with_gradient,
    slab_affine,
    slabs,
    split_affine,
    voxel_grid,
    warp_physical,
)
