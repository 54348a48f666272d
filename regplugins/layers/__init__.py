"""Layers that MONAI lacks for registration: field composition, affines, unit conversions, gradient maps and field fusion."""

from .fusion import GatedFusion
from .gradient import GradientMagnitude
from .spatial import (
    affine_to_ddf,
    apply_affine,
    cached_warp,
    compose_ddf,
    ddf_to_physical,
    resample_ddf,
    sample,
    voxel_grid,
    warp_physical,
)
