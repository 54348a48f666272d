"""Layers that MONAI lacks for registration: field composition, affines and unit conversions."""

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
