"""Rigid CT/MR registration of the head: ITK Euler parameters, the paper's augmentation, ground-truth generation."""

from .augment import write_augmented_set
from .groundtruth import generate_ground_truth, settle_moving_frame, symmetry_frame, write_ground_truth
from .parameters import (
    euler_angles,
    euler_rotation,
    grid_center_lps,
    random_rigid_parameters,
    ras_to_lps,
    read_rigid_tfm,
    rigid_field,
    rigid_matrix,
    rigid_parameters,
    write_rigid_files,
)
