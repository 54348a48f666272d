"""Mutual-information refinement of a rigid transform: the finishing stage of the rigid head bundle.

The paper's network (the DCNN regression with its ANN stage) brings a pair to within about a
degree and a millimetre, from a 5 mm working grid. ANTs Rigid gets a twentieth of that with
Mattes mutual information and gradient descent, coarse to fine. Its precision, and that of ITK's
finish this module replaced (0.10), follows the number of points the metric compares: ITK draws
one random sample per level and descends on it, so that sample's bias stays in the answer.
:func:`refine_rigid` draws a fresh sample at every step instead, on the native grids of both
images, and averages the second half of its last level's steps: the draws' noise averages out,
at the cost of one trilinear gather per point (the value and its gradient from
:func:`~regplugins.layers.sample_with_gradient`, the histogram's gradient from
:meth:`~regplugins.losses.ParzenMutualInformationLoss.value_and_gradient`), not the seven
interpolations of ITK's metric with central differences.

Everything is in ITK's LPS millimetres and ITK's convention: a 4x4 matrix maps a fixed point to
the moving point it samples, and the rotation turns about ``center_mm`` (the fixed grid's centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from regplugins.alignment import affine_about, backward_mutual_information
from regplugins.layers import apply_affine, sample_with_gradient
from regplugins.losses import ParzenMutualInformationLoss
from regplugins.optimizers import Adam

__all__ = ["RefinementImage", "refine_rigid", "mutual_information", "HEAD_RADIUS_MM"]

# the scale between a rotation and a translation: a radian turns a head's surface by about this many mm
HEAD_RADIUS_MM = 80.0


class RefinementImage(NamedTuple):
    """An image on its native grid, intensities in [0, 1], and its voxel-to-LPS ``affine`` (float64, 4x4)."""

    image: torch.Tensor
    affine: torch.Tensor


def _level(image: RefinementImage, spacing_mm: float) -> RefinementImage:
    """``image`` averaged over boxes of about ``spacing_mm`` (whole voxels per axis, none where the grid is coarser already)."""
    spacing = image.affine[:3, :3].norm(dim=0)
    factors = [max(1, round(spacing_mm / float(s))) for s in spacing]
    if factors == [1, 1, 1]:
        return image
    to_fine = torch.eye(4, dtype=torch.float64)  # a box's centre in the fine grid's voxels
    to_fine[:3, :3] = torch.diag(torch.tensor(factors, dtype=torch.float64))
    to_fine[:3, 3] = (torch.tensor(factors, dtype=torch.float64) - 1) / 2
    return RefinementImage(F.avg_pool3d(image.image[None, None], factors, ceil_mode=True)[0, 0], image.affine @ to_fine)


def _random_voxels(shape: Sequence[int], count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` voxels of a grid drawn at random: their coordinates ``(3, count)`` and flat indices."""
    voxels = torch.stack([torch.randint(size, (count,), generator=generator) for size in shape])
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    return voxels.float(), (voxels * strides[:, None]).sum(0)


def _inside(voxel_matrix: torch.Tensor, points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Which fixed voxels ``points`` ``(3, K)`` the moving voxel matrix sends inside the moving grid ``shape``.

    ITK's metrics skip a point that leaves the moving image, so does this refinement: zeros there
    are not air, and a moving image that covers part of the head would otherwise be pulled over it.
    """
    moved = apply_affine(voxel_matrix.float(), points)
    return ((moved >= 0) & (moved <= torch.tensor(shape, dtype=moved.dtype)[:, None] - 1)).all(0)


def mutual_information(
    fixed: RefinementImage, moving: RefinementImage, matrix: np.ndarray, num_bins: int = 16, num_samples: int = 2**16, seed: int = 0
) -> float:
    """Negative mutual information (nats; lower is more similar) of ``moving`` through ``matrix`` against ``fixed``.

    Over one seeded sample of ``num_samples`` fixed voxels, the same for every transform it
    compares, at random places: a regular lattice of them ranks transforms by their interpolation
    artefacts (ITK's Mattes MI on every second voxel ranked a network estimate 0.5 degrees off
    above the refinement on two of four heads).
    """
    generator = torch.Generator().manual_seed(seed)
    points, index = _random_voxels(fixed.image.shape, num_samples, generator)
    voxel_matrix = torch.linalg.inv(moving.affine) @ torch.as_tensor(matrix, dtype=torch.float64) @ fixed.affine
    inside = _inside(voxel_matrix, points, moving.image.shape)
    values, _ = sample_with_gradient(moving.image[..., None], apply_affine(voxel_matrix.float(), points[:, inside]))
    loss, _ = ParzenMutualInformationLoss(num_bins).value_and_gradient(values[:, 0], fixed.image.flatten()[index[inside]])
    return float(loss)


def refine_rigid(
    fixed: RefinementImage,
    moving: RefinementImage,
    matrix: np.ndarray,
    center_mm: Sequence[float],
    level_spacings_mm: Sequence[float] = (3.0, 0.0),
    iterations: Sequence[int] = (40, 80),
    num_samples: int = 16384,
    num_bins: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """The rigid 4x4 matrix that maximises mutual information, from ``matrix`` (the network's estimate), coarse to fine.

    Args:
        fixed, moving: each on its own grid (:func:`regplugins.transforms.rigid.refinement_image`).
        matrix: the start, 4x4, fixed LPS point to moving LPS point.
        center_mm: the rotation centre (the fixed grid's centre, as ITK's Euler transform has it).
        level_spacings_mm: the pyramid, coarse to fine: both images averaged over boxes of about
            this size (0: their native grids, the last level's, where the precision comes from).
        iterations: Adam steps per level. The step starts at a third of the level's fixed voxel
            (rotations scaled by :data:`HEAD_RADIUS_MM`) and shrinks to a tenth of that; the
            second half of the last level's steps is averaged, which halved the rotation error
            of the last step's transform.
        num_samples: fixed voxels drawn afresh at each step (32,768 cost 0.4 s more a pair and
            were no more precise on the bench's heads; docs/experiments/head_ct_mr_rigid_reg.md).
        num_bins: of the joint histogram (32: the same rotation, 0.002-0.004 mm further off).
        seed: of the draws, so that a pair always gets the same answer.
    """
    start = torch.as_tensor(matrix, dtype=torch.float64)
    center = torch.as_tensor(np.asarray(center_mm, dtype=np.float64))
    rotation = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    translation = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    similarity = ParzenMutualInformationLoss(num_bins)
    generator = torch.Generator().manual_seed(seed)
    average, averaged = torch.zeros(6, dtype=torch.float64), 0
    for level, (spacing_mm, steps) in enumerate(zip(level_spacings_mm, iterations)):
        fixed_level, moving_level = _level(fixed, spacing_mm), _level(moving, spacing_mm)
        to_moving, volume = torch.linalg.inv(moving_level.affine) @ start, moving_level.image[..., None].contiguous()
        fixed_values = fixed_level.image.flatten()
        step_mm = float(fixed_level.affine[:3, :3].norm(dim=0).max()) / 3
        optimizer = Adam([{"params": [rotation], "lr": step_mm / HEAD_RADIUS_MM}, {"params": [translation], "lr": step_mm}])
        last = level == len(iterations) - 1
        for i in range(steps):
            optimizer.zero_grad()
            points, index = _random_voxels(fixed_level.image.shape, num_samples, generator)
            with torch.enable_grad():
                voxel_matrix = to_moving @ affine_about(rotation, translation, center) @ fixed_level.affine
                inside = _inside(voxel_matrix.detach(), points, volume.shape[:3])
                if not inside.all() and inside.sum() * 16 >= inside.numel():  # a sixteenth at least, or every point (a start far off)
                    points, index = points[:, inside], index[inside]
                backward_mutual_information(similarity, voxel_matrix, points, volume, fixed_values[index])
            optimizer.step(lr_scale=1.0 - 0.9 * i / steps)
            if last and 2 * i >= steps:
                average += torch.cat([rotation.detach(), translation.detach()])
                averaged += 1
    if averaged:
        rotation, translation = average[:3] / averaged, average[3:] / averaged
    return (start @ affine_about(rotation, translation, center)).detach().numpy()
