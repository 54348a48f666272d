"""Global pre-alignment by maximising mutual information, the affine stage ANTs runs before SyN.

The deformable networks of the papers were trained and tested on affinely pre-aligned images;
users bring scans that are not. :func:`fit_affine` finds the affine that best aligns a moving
image to a fixed image on the same grid (both intensities in [0, 1]) by mutual information
(:class:`~regplugins.losses.ParzenMutualInformationLoss`), coarse to fine, starting from the alignment of the centres
of mass of the two heads. The matrix it returns maps fixed-grid voxels to the voxels of the
same grid where the moving image is sampled, so a network's field composes with it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from regplugins.layers import ImageDomain, apply_affine, gaussian_smooth, sample, sample_with_gradient, voxel_grid
from regplugins.losses import ParzenMutualInformationLoss
from regplugins.optimizers import Adam

__all__ = ["PREALIGNMENTS", "LEVELS", "fit_affine", "warp_affine", "foreground_center", "affine_about", "backward_mutual_information"]

# the bundles' ``prealign`` setting: none, or the transform fitted
PREALIGNMENTS = ("none", "rigid", "affine")
# the fit's pyramid, downsampling factors of the grid, coarse to fine
LEVELS = (4, 2, 1)


def foreground_center(image: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Voxel centre of mass ``(N,)`` of the voxels above ``threshold`` of a ``(*spatial)`` image.

    Background is 0 in both modalities after normalisation, so this is the centre of the head
    whatever the contrast; the whole grid's centre when nothing is above the threshold.
    """
    grid = voxel_grid(image.shape, device=image.device)
    mask = (image > threshold).to(grid.dtype)
    if mask.sum() == 0:
        return torch.tensor([(s - 1) / 2.0 for s in image.shape], device=image.device)
    return (grid * mask).flatten(1).sum(1) / mask.sum()


def _rotation(vector: torch.Tensor) -> torch.Tensor:
    """The rotation matrix of an axis-angle ``vector`` (Rodrigues' formula, the exponential of its skew matrix, in a
    fifth of ``matrix_exp``'s time with its gradient); 2D takes one angle."""
    if vector.numel() == 1:
        cos, sin = torch.cos(vector[0]), torch.sin(vector[0])
        return torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
    x, y, z = vector
    zero = vector.new_zeros(())
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    angle = vector.norm()
    # sin(a) / a and (1 - cos(a)) / a^2 through sinc, whose value and gradient are defined at 0
    return torch.eye(3, dtype=vector.dtype) + torch.sinc(angle / math.pi) * skew + 0.5 * torch.sinc(angle / (2 * math.pi)) ** 2 * skew @ skew


def affine_about(rotation, translation, center, stretch=None) -> torch.Tensor:
    """Homogeneous matrix of ``p -> c + t + R (I + S) (p - c)``: ``R`` of the axis-angle ``rotation``, ``S`` the
    symmetric part of ``stretch`` (none by default, a rigid transform); differentiable in all of them."""
    n = center.numel()
    linear = _rotation(rotation) if stretch is None else _rotation(rotation) @ (torch.eye(n, dtype=center.dtype) + (stretch + stretch.T) / 2)
    top = torch.cat([linear, (center + translation - linear @ center)[:, None]], 1)
    return torch.cat([top, torch.eye(n + 1, dtype=center.dtype)[n:]])


def warp_affine(image: torch.Tensor, matrix: torch.Tensor, points: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Values of ``image`` ``(B, C, *spatial)`` at ``matrix @ p``, zero outside.

    ``p`` runs over the image's own voxel grid, or over ``points`` ``(N, *P)`` (voxel
    coordinates, e.g. a random subset of the grid shaped ``(N, K, 1, 1)``) when given.
    """
    if points is None:
        points = voxel_grid(image.shape[2:], device=image.device)
    moved = apply_affine(matrix.to(image), points)
    return sample(image, moved.unsqueeze(0).expand(image.shape[0], *moved.shape), mode=mode)


def _level_to_grid(factor: float, n: int) -> torch.Tensor:
    """Homogeneous matrix from a level's voxels to the grid's: a level's voxel q sits at ``factor * q + (factor - 1) / 2``."""
    to_full = torch.eye(n + 1, dtype=torch.float64)
    to_full[:n, :n] *= factor
    to_full[:n, n] = (factor - 1) / 2.0
    return to_full


def _downsampled(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image`` ``(1, 1, *spatial)`` on a grid ``factor`` times coarser, voxel centres as :func:`_level_to_grid` puts them.

    A whole factor averages boxes of voxels; another one blurs a voxel to the coarser voxel's size
    (sigma ``sqrt(factor^2 - 1) / 2``, as ``AntiAliasd``) and samples linearly at its centres.
    """
    n = image.dim() - 2
    if float(factor).is_integer():
        return (F.avg_pool2d if n == 2 else F.avg_pool3d)(image, int(factor), ceil_mode=True)
    smoothed = gaussian_smooth(image, [math.sqrt(factor**2 - 1) / 2.0] * n)
    shape = [math.ceil(size / factor) for size in image.shape[2:]]
    return warp_affine(smoothed, _level_to_grid(factor, n), voxel_grid(shape, device=image.device))


def backward_mutual_information(
    similarity: ParzenMutualInformationLoss, voxel_matrix: torch.Tensor, points: torch.Tensor, volume: torch.Tensor, fixed_values: torch.Tensor
) -> torch.Tensor:
    """Back-propagate the mutual information of an affine fit into ``voxel_matrix``, and return it (negative).

    ``volume`` ``(*S, 1)`` (channels last) is sampled at ``voxel_matrix @ points`` (``(N + 1, N + 1)``,
    requiring grad; ``points`` ``(N, K)`` in voxels) and compared with ``fixed_values`` ``(K,)``. The
    chain rule to the matrix is written out: autograd through the sampling costs three times as much.
    """
    n = points.shape[0]
    values, pull = sample_with_gradient(volume, apply_affine(voxel_matrix.detach().float(), points))
    loss, value_gradient = similarity.value_and_gradient(values[:, 0], fixed_values)
    point_gradient = pull(value_gradient[:, None])
    matrix_gradient = torch.zeros_like(voxel_matrix)
    matrix_gradient[:n, :n], matrix_gradient[:n, n] = point_gradient @ points.T, point_gradient.sum(1)
    voxel_matrix.backward(matrix_gradient)
    return loss


def fit_affine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    transform: str = "affine",
    levels: Sequence[float] = LEVELS,
    iterations: Sequence[int] = (60, 30, 30),
    learning_rate: float = 0.05,
    num_bins: int = 32,
    num_samples: int = 8192,
    seed: int = 0,
    moving_domain: ImageDomain | None = None,
) -> torch.Tensor:
    """The voxel matrix ``(N + 1, N + 1)`` that aligns ``moving`` to ``fixed``: ``warped(p) = moving(A p)``.

    Args:
        fixed, moving: ``(*spatial)`` images on one grid with intensities in [0, 1].
        transform: ``"rigid"`` (rotation and translation) or ``"affine"`` (also scale and shear).
        levels: downsampling factor of each level, coarse to fine; a fractional one (a finer grid
            fitted at the same levels in mm, :class:`~regplugins.transforms.AffineAlignd`) is
            smoothed and resampled instead of averaged over boxes.
        iterations: Adam steps at each level.
        learning_rate: step of the rotation (radians) and of the translation (in units of the
            coarsest level's voxel) at the coarsest level; the stretch a twentieth (a free scale
            lets mutual information shrink the head). Steps shrink with the level's factor, so
            the last level settles to a fraction of a degree (the rigid-only table of
            docs/benchmarks.md measures it).
        num_bins: histogram bins of the mutual information.
        num_samples: voxels drawn at random at each step to estimate it (as ITK and ANTs sample),
            which makes a step cost the same at any image size.
        seed: of those draws, so that a pair always gets the same answer.
        moving_domain: where ``moving`` has data on the grid (the moving image's own grid); a drawn
            voxel whose moving point falls outside it (by a level's voxel) is left out, as ITK leaves
            it out, unless that would leave fewer than a sixteenth of the draws.
    """
    if transform not in ("rigid", "affine"):
        raise ValueError(f'transform must be "rigid" or "affine", got {transform!r}.')
    n = fixed.dim()
    # plain tensors: MetaTensor's per-operation bookkeeping would double the time of the loop
    fixed, moving = (convert_to_tensor(image, dtype=torch.float32, track_meta=False).detach() for image in (fixed, moving))
    center = foreground_center(fixed).double()
    rotation = torch.zeros(1 if n == 2 else 3, dtype=torch.float64, requires_grad=True)
    stretch = torch.zeros(n, n, dtype=torch.float64, requires_grad=(transform == "affine"))
    translation = (foreground_center(moving).double() - center).requires_grad_(True)
    similarity = ParzenMutualInformationLoss(num_bins=num_bins)
    generator = torch.Generator(device=fixed.device).manual_seed(seed)
    with torch.enable_grad():
        for factor, steps in zip(levels, iterations):
            fixed_level, moving_level = (_downsampled(image[None, None], factor) for image in (fixed, moving))
            grid = voxel_grid(fixed_level.shape[2:], device=fixed.device).flatten(1)
            # the parameters live in full-grid voxels
            to_full = _level_to_grid(factor, n)
            to_level = torch.linalg.inv(to_full)
            step = learning_rate * factor / levels[0]
            groups = [{"params": [rotation], "lr": step}, {"params": [translation], "lr": step * factor}]
            if transform == "affine":
                groups.append({"params": [stretch], "lr": step / 20})
            optimizer = Adam(groups)
            for i in range(steps):
                optimizer.zero_grad()
                chosen = torch.randint(grid.shape[1], (min(num_samples, grid.shape[1]),), generator=generator, device=fixed.device)
                matrix = to_level @ affine_about(rotation, translation, center, stretch) @ to_full
                if moving_domain is not None:
                    with torch.no_grad():
                        inside = moving_domain.contains(apply_affine(to_full @ matrix.detach(), grid[:, chosen].double()), margin=factor)
                    if inside.sum() * 16 >= chosen.numel():
                        chosen = chosen[inside]
                points = grid.index_select(1, chosen)
                backward_mutual_information(similarity, matrix, points, moving_level[0, 0, ..., None], fixed_level.flatten().index_select(0, chosen))
                # a step that shrinks to a tenth over the level settles despite the random sampling
                optimizer.step(lr_scale=1.0 - 0.9 * i / steps)
    return affine_about(rotation, translation, center, stretch).detach()
