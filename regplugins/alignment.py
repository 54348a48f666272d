"""Global pre-alignment by maximising mutual information, the affine stage ANTs runs before SyN.

The deformable networks of the papers were trained and tested on affinely pre-aligned images;
users bring scans that are not. :func:`fit_affine` finds the affine that best aligns a moving
image to a fixed image on the same grid (both intensities in [0, 1]) by mutual information
(:class:`~regplugins.losses.ParzenMutualInformationLoss`), coarse to fine, starting from the alignment of the centres
of mass of the two heads. The matrix it returns maps fixed-grid voxels to the voxels of the
same grid where the moving image is sampled, so a network's field composes with it exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from regplugins.layers import ImageDomain, apply_affine, gaussian_smooth, sample, sample_affine, sample_with_gradient, voxel_grid
from regplugins.losses import ParzenMutualInformationLoss
from regplugins.optimizers import Adam

logger = logging.getLogger(__name__)

__all__ = [
    "PREALIGNMENTS",
    "LEVELS",
    "FINISH_LEVELS_MM",
    "FINISH_ITERATIONS",
    "QUARTER_TURNS",
    "principal_axes_turns",
    "rotation_vector",
    "least_turned_pose",
    "POSE_MARGIN",
    "searched_turn",
    "HEAD_RADIUS_MM",
    "NativeImage",
    "fit_affine",
    "finish_affine",
    "mutual_information",
    "warp_affine",
    "foreground_center",
    "affine_about",
    "backward_mutual_information",
]

# the bundles' ``prealign`` setting: none, or the transform fitted
PREALIGNMENTS = ("none", "rigid", "affine")
# the fit's pyramid, downsampling factors of the grid, coarse to fine
LEVELS = (4, 2, 1)
# the finish's pyramid on the native images (:func:`finish_affine`): boxes of about 3 mm, then the voxels, and Adam steps on each
FINISH_LEVELS_MM, FINISH_ITERATIONS = (3.0, 0.0), (40, 80)
# starts of a fit that looks for a head in any position (axis-angle, 3D): none, and a quarter turn
# either way about each axis, so that a head turned by up to 60 degrees per axis lies near one of them
QUARTER_TURNS = (torch.zeros(3, dtype=torch.float64),) + tuple(
    sign * math.pi / 2 * torch.eye(3, dtype=torch.float64)[axis] for axis in range(3) for sign in (1, -1)
)


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
    """The rotation matrices ``(..., N, N)`` of axis-angle vectors ``(..., 3)`` (Rodrigues' formula, the exponential of
    their skew matrices, in a fifth of ``matrix_exp``'s time with its gradient); 2D takes one angle ``(..., 1)``."""
    if vector.shape[-1] == 1:
        cos, sin = torch.cos(vector[..., 0]), torch.sin(vector[..., 0])
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2)
    angle = vector.norm(dim=-1)[..., None, None]
    # sin(a) / a and (1 - cos(a)) / a^2 through sinc, whose value and gradient are defined at 0
    return torch.eye(3, dtype=vector.dtype) + torch.sinc(angle / math.pi) * skew + 0.5 * torch.sinc(angle / (2 * math.pi)) ** 2 * skew @ skew


def rotation_vector(matrix: torch.Tensor) -> torch.Tensor:
    """The axis-angle vector (angle in [0, pi]) of a 3x3 rotation ``matrix``, the inverse of :func:`_rotation`.

    Through the unit quaternion, from its largest component (Shepperd's method), so that a turn
    near 180 degrees, where the matrix's antisymmetric part vanishes, keeps its axis.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    trace = m.trace()
    largest = int(torch.cat([trace[None], m.diagonal()]).argmax())
    if largest == 0:
        w = torch.sqrt(1 + trace) / 2
        vector = torch.stack([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (4 * w)
    else:
        a = largest - 1
        b, c = (a + 1) % 3, (a + 2) % 3
        quaternion = torch.empty(4, dtype=torch.float64)
        quaternion[1 + a] = torch.sqrt(1 + 2 * m[a, a] - trace) / 2
        quaternion[0] = (m[c, b] - m[b, c]) / (4 * quaternion[1 + a])
        quaternion[1 + b] = (m[a, b] + m[b, a]) / (4 * quaternion[1 + a])
        quaternion[1 + c] = (m[a, c] + m[c, a]) / (4 * quaternion[1 + a])
        w, vector = quaternion[0], quaternion[1:]
    if w < 0:  # q and -q are one rotation; this sign turns by at most 180 degrees
        w, vector = -w, -vector
    sine = vector.norm()
    return vector if sine == 0 else vector / sine * 2 * torch.atan2(sine, w)


def least_turned_pose(matrices: Sequence[np.ndarray], scores: Sequence[float], margin: float, same_pose_deg: float = 30.0) -> int:
    """The index of the best-scoring of ``matrices`` (4x4) in the least-turned pose that scores within ``margin`` of the lowest.

    Images that cannot tell two poses apart (a nearly round head with little inside it, a
    cropped field of view) can score a pose turned half round a little better than the one their
    headers give, by the measure's noise; then the pose nearer the headers is the better guess.
    Fits within ``same_pose_deg`` of one another are one pose, of which the best-scoring is kept.
    """

    def turn(rotation: np.ndarray) -> float:
        return float(rotation_vector(torch.as_tensor(rotation)).norm())

    rotations = [np.asarray(matrix, dtype=np.float64)[:3, :3] for matrix in matrices]
    lowest = min(scores)
    nearest = min((i for i, score in enumerate(scores) if score <= lowest + margin), key=lambda i: turn(rotations[i]))
    same_pose = [i for i, rotation in enumerate(rotations) if turn(rotation.T @ rotations[nearest]) < math.radians(same_pose_deg)]
    return min(same_pose, key=lambda i: scores[i])


# nats: a fit for a head in any position starts from the least-turned pose its screened fits reach within this of the
# best. On 46 MNI152 heads (the rigid bench kinds, the far turns), every fit in a wrong pose scored 0.25 nats or more
# below the right one; on nearly round generated heads, a pose turned half round came within 0.021 of it, and on a
# test pair 0.021 above (docs/experiments/head_ct_mr_rigid_reg.md)
POSE_MARGIN = 0.05


def searched_turn(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    screen: Callable[[torch.Tensor], np.ndarray],
    score: Callable[[np.ndarray], np.ndarray],
    margin: float = POSE_MARGIN,
) -> tuple[torch.Tensor, np.ndarray]:
    """The start (axis-angle, voxel axes) from which to fit a head that may lie in any position, and its screened fit.

    ``screen`` fits from a batch of starts ``(B, 3)`` briefly (:func:`fit_affine` fits them at once) and returns
    their 4x4 LPS matrices ``(B, 4, 4)``, ``score`` rates a batch of matrices
    (lower is more similar). The starts are the :data:`QUARTER_TURNS` (a head turned up to 60
    degrees per axis) and the :func:`principal_axes_turns` of ``fixed`` and ``moving`` (``(*spatial)``,
    one isotropic grid; a head upside down or turned about several axes); the one kept is
    :func:`least_turned_pose`'s, and the log says when that is not the best-scoring. A fit that
    goes on from the screened fit's turn rather than the start's keeps what the screening found:
    an affine fit from the identity drifted 40 to 54 degrees on a head turned 50 whose rigid
    screening fit from there was 1 degree off (docs/experiments/refinement.md).
    """
    starts = QUARTER_TURNS + principal_axes_turns(fixed, moving)
    screened = screen(torch.stack(starts))
    scores = list(score(screened))
    best, kept = int(np.argmin(scores)), least_turned_pose(screened, scores, margin)
    if kept != best:
        turns = (np.degrees(float(rotation_vector(torch.as_tensor(screened[i][:3, :3])).norm())) for i in (best, kept))
        logger.warning(
            "a turn of %.0f degrees scores at most %.2f nats better than one of %.0f degrees; the pre-alignment "
            "keeps the turn nearer the headers (a nearly symmetric head or field of view)",
            next(turns),
            margin,
            next(turns),
        )
    return starts[kept], screened[kept]


def _principal_axes(image: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns, ascending) of the intensity-weighted covariance of a ``(*spatial)`` image's voxel coordinates."""
    grid, weights = voxel_grid(image.shape, device=image.device).flatten(1).double(), image.flatten().double().clamp(min=0)
    centred = grid - (grid * weights).sum(1, keepdim=True) / weights.sum()
    return torch.linalg.eigh((centred * weights) @ centred.T / weights.sum())[1]


def principal_axes_turns(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four rotations (axis-angle, voxel axes) that map the fixed head's principal axes onto the moving head's.

    Starts of a fit for a head turned any way (180 degrees about an axis, compound turns), which
    the :data:`QUARTER_TURNS` do not reach: a head's three axes of inertia differ, so they fix its
    turn up to each axis's sign, four proper rotations. ``fixed`` and ``moving`` are ``(*spatial)``
    images on one isotropic grid (3D).
    """
    fixed_axes, moving_axes = _principal_axes(fixed), _principal_axes(moving)
    proper = torch.det(moving_axes @ fixed_axes.T)  # a sign that makes each turn a rotation, not a mirror
    signs = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) * proper
    return tuple(rotation_vector(moving_axes @ torch.diag(sign) @ fixed_axes.T).cpu() for sign in signs)


def affine_about(rotation, translation, center, stretch=None) -> torch.Tensor:
    """Homogeneous matrix of ``p -> c + t + R (I + S) (p - c)``: ``R`` of the axis-angle ``rotation``, ``S`` the
    symmetric part of ``stretch`` (none by default, a rigid transform); differentiable in all of them.

    ``rotation`` ``(..., 3)``, ``translation`` ``(..., N)`` and ``stretch`` ``(..., N, N)`` may carry a batch of
    transforms about one ``center`` ``(N,)``, which gives a batch of matrices ``(..., N + 1, N + 1)``.
    """
    n = center.shape[-1]
    linear = _rotation(rotation)
    if stretch is not None:
        linear = linear @ (torch.eye(n, dtype=center.dtype) + (stretch + stretch.transpose(-1, -2)) / 2)
    top = torch.cat([linear, (center + translation - (linear @ center[:, None])[..., 0])[..., None]], -1)
    return torch.cat([top, torch.eye(n + 1, dtype=center.dtype)[n:].expand(*top.shape[:-2], 1, n + 1)], -2)


def warp_affine(image: torch.Tensor, matrix: torch.Tensor, points: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Values of ``image`` ``(B, C, *spatial)`` at ``matrix @ p``, zero outside.

    ``p`` runs over the image's own voxel grid, or over ``points`` ``(N, *P)`` (voxel
    coordinates, e.g. a random subset of the grid shaped ``(N, K, 1, 1)``) when given.
    """
    if points is None:
        return sample_affine(image, matrix.to(image), image.shape[2:], mode=mode)
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
    return sample_affine(smoothed, _level_to_grid(factor, n).to(smoothed), shape)


def _moved_points(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The ``points`` ``(N, K)`` moved by each of a batch of ``matrices`` ``(..., N + 1, N + 1)``, one after another ``(N, B * K)``."""
    return torch.cat([apply_affine(matrix, points) for matrix in matrices.reshape(-1, *matrices.shape[-2:])], 1)


def backward_mutual_information(
    similarity: ParzenMutualInformationLoss,
    voxel_matrix: torch.Tensor,
    points: torch.Tensor,
    volume: torch.Tensor,
    fixed_values: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Back-propagate the mutual information of an affine fit into ``voxel_matrix``, and return it (negative).

    ``volume`` ``(*S, 1)`` (channels last) is sampled at ``voxel_matrix @ points`` (``(..., N + 1, N + 1)``,
    a batch of matrices one loss each, requiring grad; ``points`` ``(N, K)`` in voxels) and compared with
    ``fixed_values`` ``(K,)``; ``weights`` ``(..., K)`` leave points out (ParzenMutualInformationLoss.value_and_gradient).
    The chain rule to the matrix is written out: autograd through the sampling costs three times as much.
    """
    n, count = points.shape
    matrices = voxel_matrix.detach().float().reshape(-1, n + 1, n + 1)
    values, pull = sample_with_gradient(volume, _moved_points(matrices, points))
    loss, value_gradient = similarity.value_and_gradient(values[:, 0].view(-1, count), fixed_values, weights)
    point_gradient = pull(value_gradient.reshape(-1, 1)).view(n, -1, count)
    matrix_gradient = torch.zeros_like(voxel_matrix).reshape(-1, n + 1, n + 1)
    matrix_gradient[:, :n, :n] = torch.stack([each @ points.T for each in point_gradient.unbind(1)])
    matrix_gradient[:, :n, n] = point_gradient.sum(2).T
    voxel_matrix.backward(matrix_gradient.view(voxel_matrix.shape))
    return loss.view(voxel_matrix.shape[:-2])


def _inside_domain(domain: ImageDomain, matrices: torch.Tensor, points: torch.Tensor, margin: float) -> torch.Tensor | None:
    """Weights ``(..., K)`` that leave out the ``points`` ``(N, K)`` each of ``matrices`` ``(..., N + 1, N + 1)`` sends outside
    ``domain`` (by ``margin`` voxels), unless that leaves fewer than a sixteenth of them; ``None`` where none leaves it."""
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    with torch.no_grad():
        inside = domain.contains(_moved_points(flat, points.double()), margin=margin).view(len(flat), -1)
    inside |= inside.sum(1, keepdim=True) * 16 < points.shape[1]
    return None if inside.all() else inside.view(*matrices.shape[:-2], -1)


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
    rotation: torch.Tensor | None = None,
) -> torch.Tensor:
    """The voxel matrix ``(N + 1, N + 1)`` that aligns ``moving`` to ``fixed``: ``warped(p) = moving(A p)``.

    Given a batch of start turns ``rotation`` ``(B, 3)``, the ``B`` fits from them at once ``(B, N + 1, N + 1)``,
    each as it would be alone (they share the random draws): a search of several starts
    (:func:`searched_turn`) in a fraction of the time of one fit after another, whose time goes
    into the many small operations of a step, not into its samples.

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
        rotation: the start's turn about the fixed head's centre, axis-angle in the grid's voxel
            axes (one angle in 2D; :data:`QUARTER_TURNS`), or a batch of them; none by default. The
            start maps that centre to the moving head's centre either way.
    """
    if transform not in ("rigid", "affine"):
        raise ValueError(f'transform must be "rigid" or "affine", got {transform!r}.')
    n = fixed.dim()
    # plain tensors: MetaTensor's per-operation bookkeeping would double the time of the loop
    fixed, moving = (convert_to_tensor(image, dtype=torch.float32, track_meta=False).detach() for image in (fixed, moving))
    center = foreground_center(fixed).double()
    rotation = torch.zeros(1 if n == 2 else 3, dtype=torch.float64) if rotation is None else torch.as_tensor(rotation, dtype=torch.float64)
    rotation = rotation.clone().requires_grad_(True)
    batch = rotation.shape[:-1]
    stretch = torch.zeros(*batch, n, n, dtype=torch.float64, requires_grad=(transform == "affine"))
    translation = (foreground_center(moving).double() - center).expand(*batch, n).clone().requires_grad_(True)
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
                points = grid.index_select(1, chosen)
                matrix = to_level @ affine_about(rotation, translation, center, stretch) @ to_full
                weights = None if moving_domain is None else _inside_domain(moving_domain, to_full @ matrix.detach(), points, factor)
                backward_mutual_information(
                    similarity, matrix, points, moving_level[0, 0, ..., None], fixed_level.flatten().index_select(0, chosen), weights
                )
                # a step that shrinks to a tenth over the level settles despite the random sampling
                optimizer.step(lr_scale=1.0 - 0.9 * i / steps)
    return affine_about(rotation, translation, center, stretch).detach()


# The finish on the native grids. ``fit_affine`` works on a bundle's working grid and ends at its
# 3 to 4 mm level; ANTs Rigid and Affine end on the images themselves. Their precision, and that of
# ITK's finish the rigid bundle had before 0.8.0, follows the number of points the metric compares:
# ITK draws one random sample per level and descends on it, so that sample's bias stays in the
# answer. :func:`finish_affine` draws a fresh sample at every step instead, on both images' own
# grids, and averages the second half of its last level's steps. Everything in it is in ITK's LPS
# millimetres and ITK's convention: a 4x4 matrix maps a fixed point to the moving point it samples.

# the scale between a rotation and a translation: a radian turns a head's surface by about this many mm
HEAD_RADIUS_MM = 80.0


class NativeImage(NamedTuple):
    """An image on its native grid, intensities in [0, 1], and its voxel-to-LPS ``affine`` (float64, 4x4)."""

    image: torch.Tensor
    affine: torch.Tensor

    @property
    def center_mm(self) -> np.ndarray:
        """The grid's centre (LPS mm): where :func:`finish_affine` turns a head about, as ITK's Euler transform does."""
        middle = (torch.tensor(self.image.shape, dtype=torch.float64) - 1) / 2
        return (self.affine[:3, :3] @ middle + self.affine[:3, 3]).numpy()


def _native_level(image: NativeImage, spacing_mm: float) -> NativeImage:
    """``image`` averaged over boxes of about ``spacing_mm`` (whole voxels per axis, none where the grid is coarser already)."""
    spacing = image.affine[:3, :3].norm(dim=0)
    factors = [max(1, round(spacing_mm / float(s))) for s in spacing]
    if factors == [1, 1, 1]:
        return image
    to_fine = torch.eye(4, dtype=torch.float64)  # a box's centre in the fine grid's voxels
    to_fine[:3, :3] = torch.diag(torch.tensor(factors, dtype=torch.float64))
    to_fine[:3, 3] = (torch.tensor(factors, dtype=torch.float64) - 1) / 2
    return NativeImage(F.avg_pool3d(image.image[None, None], factors, ceil_mode=True)[0, 0], image.affine @ to_fine)


def _random_voxels(shape: Sequence[int], count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` voxels of a grid drawn at random: their coordinates ``(3, count)`` and flat indices."""
    voxels = torch.stack([torch.randint(size, (count,), generator=generator) for size in shape])
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    return voxels.float(), (voxels * strides[:, None]).sum(0)


def _inside(voxel_matrix: torch.Tensor, points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Which fixed voxels ``points`` ``(3, K)`` the moving voxel matrix sends inside the moving grid ``shape``.

    ITK's metrics skip a point that leaves the moving image, so does the finish: zeros there
    are not air, and a moving image that covers part of the head would otherwise be pulled over it.
    """
    moved = apply_affine(voxel_matrix.float(), points)
    return ((moved >= 0) & (moved <= torch.tensor(shape, dtype=moved.dtype)[:, None] - 1)).all(0)


def mutual_information(
    fixed: NativeImage, moving: NativeImage, matrix: np.ndarray, num_bins: int = 16, num_samples: int = 2**16, seed: int = 0
) -> float | np.ndarray:
    """Negative mutual information (nats; lower is more similar) of ``moving`` through ``matrix`` against ``fixed``.

    Over one seeded sample of ``num_samples`` fixed voxels, the same for every transform it
    compares, at random places: a regular lattice of them ranks transforms by their interpolation
    artefacts (ITK's Mattes MI on every second voxel ranked a network estimate 0.5 degrees off
    above the refinement on two of four heads). A batch of matrices ``(B, 4, 4)`` is scored at once, ``(B,)``.
    """
    generator = torch.Generator().manual_seed(seed)
    points, index = _random_voxels(fixed.image.shape, num_samples, generator)
    voxel_matrices = torch.linalg.inv(moving.affine) @ torch.as_tensor(np.asarray(matrix), dtype=torch.float64) @ fixed.affine
    flat = voxel_matrices.reshape(-1, 4, 4)
    inside = torch.stack([_inside(voxel_matrix, points, moving.image.shape) for voxel_matrix in flat])
    values, _ = sample_with_gradient(moving.image[..., None], _moved_points(flat.float(), points))
    loss, _ = ParzenMutualInformationLoss(num_bins).value_and_gradient(values[:, 0].view(len(flat), -1), fixed.image.flatten()[index], inside)
    return float(loss) if voxel_matrices.dim() == 2 else loss.view(voxel_matrices.shape[:-2]).numpy()


def finish_affine(
    fixed: NativeImage,
    moving: NativeImage,
    matrix: np.ndarray,
    center_mm: Sequence[float],
    transform: str = "rigid",
    level_spacings_mm: Sequence[float] = FINISH_LEVELS_MM,
    iterations: Sequence[int] = FINISH_ITERATIONS,
    num_samples: int = 16384,
    num_bins: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """The 4x4 matrix near ``matrix`` that maximises mutual information on the native grids, coarse to fine.

    The rigid head bundle's finish of its network's estimate, and the last stage of the
    deformable bundles' pre-alignment (:class:`~regplugins.transforms.AffineAlignd`, ``finish``),
    whose fit on the working grid ends at 3 to 4 mm.

    Args:
        fixed, moving: each on its own grid (:func:`regplugins.transforms.native_image`).
        matrix: the start, 4x4, fixed LPS point to moving LPS point.
        center_mm: the rotation centre (the fixed grid's centre, as ITK's Euler transform has it).
        transform: ``"rigid"`` or ``"affine"`` (a stretch too, at a twentieth of the rotation's
            step, as :func:`fit_affine` has it), composed with ``matrix``.
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
    if transform not in ("rigid", "affine"):
        raise ValueError(f'transform must be "rigid" or "affine", got {transform!r}.')
    start = torch.as_tensor(matrix, dtype=torch.float64)
    center = torch.as_tensor(np.asarray(center_mm, dtype=np.float64))
    rotation = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    translation = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    stretch = torch.zeros(3, 3, dtype=torch.float64, requires_grad=(transform == "affine"))
    parameters = (rotation, translation, stretch)
    similarity = ParzenMutualInformationLoss(num_bins)
    generator = torch.Generator().manual_seed(seed)
    averages, averaged = [torch.zeros_like(p) for p in parameters], 0
    for level, (spacing_mm, steps) in enumerate(zip(level_spacings_mm, iterations)):
        fixed_level, moving_level = _native_level(fixed, spacing_mm), _native_level(moving, spacing_mm)
        to_moving, volume = torch.linalg.inv(moving_level.affine) @ start, moving_level.image[..., None].contiguous()
        fixed_values = fixed_level.image.flatten()
        step_mm = float(fixed_level.affine[:3, :3].norm(dim=0).max()) / 3
        groups = [{"params": [rotation], "lr": step_mm / HEAD_RADIUS_MM}, {"params": [translation], "lr": step_mm}]
        if transform == "affine":
            groups.append({"params": [stretch], "lr": step_mm / HEAD_RADIUS_MM / 20})
        optimizer = Adam(groups)
        last = level == len(iterations) - 1
        for i in range(steps):
            optimizer.zero_grad()
            points, index = _random_voxels(fixed_level.image.shape, num_samples, generator)
            with torch.enable_grad():
                voxel_matrix = to_moving @ affine_about(rotation, translation, center, stretch) @ fixed_level.affine
                inside = _inside(voxel_matrix.detach(), points, volume.shape[:3])
                if not inside.all() and inside.sum() * 16 >= inside.numel():  # a sixteenth at least, or every point (a start far off)
                    points, index = points[:, inside], index[inside]
                backward_mutual_information(similarity, voxel_matrix, points, volume, fixed_values[index])
            optimizer.step(lr_scale=1.0 - 0.9 * i / steps)
            if last and 2 * i >= steps:
                averaged += 1
                for average, parameter in zip(averages, parameters):
                    average += parameter.detach()
    if averaged:
        rotation, translation, stretch = (average / averaged for average in averages)
    return (start @ affine_about(rotation, translation, center, stretch)).detach().numpy()
