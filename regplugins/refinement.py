"""Instance-optimisation refinement of a network's displacement field, the step that the top Learn2Reg methods
(ConvexAdam, uniGradICON's instance optimisation) run after their networks.

A network trained on a few thousand synthetic pairs gets the large motion right and the last
millimetres wrong, and it sees the images only at its coarse working grid. :func:`refine_ddf`
keeps the network's field and optimises a residual field on the pair itself, with the images
at a finer grid (the refinement grid, 1.5 mm by default):

- :class:`PairSimilarity` computes the features of both images once on the refinement grid
  (MIND-SSC by default) and keeps them channels last; the moving image's are sampled through
  the field, not recomputed from a warped image, which is what makes a step cheap. A small
  weight of mutual information on the intensities joins them: MIND-SSC compares local
  structure, and where two contrasts show a tissue as bands of different width (bone and CSF
  in CT and MR) it settles between them, which the intensities' joint histogram resolves;
- each Adam step compares the images at a random sample of the head's voxels, as ITK and
  ANTs sample their metrics, so that a step costs the same at any image size;
- the residual lives on the working grid coarsened by ``levels`` (coarse to fine), smoothed
  by a Gaussian of one of its voxels, under a diffusion penalty on what the field does beyond
  its own affine (as SyN regularises only what follows its affine stage): it stays smooth and
  does not fold, and the refined field is one voxel DDF on the working grid again,
  which the bundles' savers take as they took the network's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import look_up_option

from regplugins.layers import (
    ImageDomain,
    affine_to_ddf,
    apply_affine,
    gaussian_smooth,
    sample,
    sample_points,
    sample_with_gradient,
    split_affine,
    voxel_grid,
)
from regplugins.losses import MINDDescriptor, ParzenMutualInformationLoss
from regplugins.optimizers import Adam

__all__ = ["MOVING_GRID_OFFSET", "SIMILARITIES", "PairSimilarity", "affine_beyond_moving", "head_foreground", "refine_ddf", "similarity_features"]

SIMILARITIES = ("mind_ssc", "mind", "ncc")
# The fraction of a voxel by which the bundles put the pre-aligned moving image off the fixed grid along each axis.
# Features read between voxels average their noise: trilinear interpolation at a fraction t keeps (1 - t)^2 + t^2 of
# its variance per axis, and a field that reads the moving features at the voxels themselves looks less similar than
# one that reads them between (an aligned pair scored better shifted by a quarter of a voxel). At this t the
# pre-alignment's field keeps 2/3, the mean over all fractions, so that it is compared as any other field is.
MOVING_GRID_OFFSET = (1.0 - 3.0**-0.5) / 2.0
# voxels kept around the head's box on the refinement grid: MIND-SSC reaches 3 voxels, the NCC window 2
HEAD_BOX_MARGIN = 4


def similarity_features(image: torch.Tensor, similarity: str = "mind_ssc", window: int = 5) -> torch.Tensor:
    """Features ``(B, C, *spatial)`` of ``(B, 1, *spatial)`` images whose squared difference is the dissimilarity.

    ``"mind_ssc"`` and ``"mind"``: the MIND descriptors (:class:`~regplugins.losses.MINDDescriptor`),
    which compare images of different contrasts. ``"ncc"``: the intensity minus its local mean
    over a ``window``-voxel box, divided by the local standard deviation; the squared difference
    of two such maps is ``2 (1 - local NCC)`` where the windows match, for images of one contrast.
    """
    similarity = look_up_option(similarity, SIMILARITIES)
    spatial_dims = image.dim() - 2
    if similarity != "ncc":
        return MINDDescriptor(spatial_dims, descriptor=similarity, variance_floor=0.01)(image)
    pool = (F.avg_pool2d, F.avg_pool3d)[spatial_dims - 2]
    padded = F.pad(image, [window // 2] * (2 * spatial_dims), mode="replicate")
    mean = pool(padded, window, stride=1)
    variance = (pool(padded**2, window, stride=1) - mean**2).clamp(min=0)
    return (image - mean) / (variance.sqrt() + 1e-3)


def _channels_last(volume: torch.Tensor) -> torch.Tensor:
    """``(C, *S)`` as ``(*S, C)``, contiguous: the layout :func:`regplugins.layers.sample_points` gathers from."""
    return torch.movedim(volume, 0, -1).contiguous()


def _dilate(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """A float mask ``(1, 1, *spatial)`` dilated by ``margin`` voxels along each axis (a cube), axis by axis.

    The maximum of shifted copies, as :func:`~regplugins.layers.gaussian_smooth` sums them: 0.01 s
    for a 128^3 mask on 2 CPU cores, where ``max_pool3d`` along one axis at a time took 0.1 s.
    """
    for axis in range(2, mask.dim()):
        length = mask.shape[axis]
        padded = F.pad(mask, [0, 0] * (mask.dim() - 1 - axis) + [margin, margin])
        dilated = padded.narrow(axis, 0, length).clone()
        for shift in range(1, 2 * margin + 1):
            torch.maximum(dilated, padded.narrow(axis, shift, length), out=dilated)
        mask = dilated
    return mask


def head_foreground(images: torch.Tensor) -> torch.Tensor:
    """Where any of the images ``(C, *spatial)`` (intensities in [0, 1], 0 is air), smoothed over a voxel, is above
    0.1: ``(1, *spatial)``. Smoothed, so that the noise of an MR image's background stays out."""
    smooth = gaussian_smooth(torch.as_tensor(images).float(), [1.0] * (images.dim() - 1))
    return (smooth > 0.1).any(0, keepdim=True)


def _head_mask(fixed: torch.Tensor, moving: torch.Tensor, margin: int) -> torch.Tensor:
    """Voxels within ``margin`` voxels of the head of either image (:func:`head_foreground`)."""
    return _dilate(head_foreground(torch.stack([fixed, moving]))[None].float(), margin)[0, 0] > 0


class PairSimilarity:
    """A fixed and a moving image on the refinement grid, and their dissimilarity under a working-grid field.

    The dissimilarity is the mean squared difference of the images' features plus
    ``mutual_information_weight`` times the negative mutual information of their intensities
    (:class:`~regplugins.losses.ParzenMutualInformationLoss`), both over head voxels of the
    refinement grid.

    Args:
        fixed, moving: ``(*spatial)`` images on the refinement grid, intensities in [0, 1] (the
            moving image taken there through ``moving_matrix``, or by world coordinates alone).
        to_working: ``(N + 1, N + 1)`` matrix from refinement-grid voxels to working-grid voxels
            (the identity when the two grids are one).
        similarity: the features, see :func:`similarity_features`.
        mutual_information_weight: 0 leaves the features alone.
        mixed_precision: keep the features in bfloat16, which halves the memory a step reads.
        margin: voxels around where either image shows something that count as the head
            (:func:`_head_mask`): its outline and the dark tissue inside it (bone in MR) are compared too.
        moving_domain: where the moving image has data on the refinement grid (the moving image's own
            grid): a head voxel whose moving point falls outside it, or within ``domain_margin``
            voxels of its edge (the features' reach), is left out of the comparison, as ITK leaves
            it out. A field is scored only where at least a sixteenth of the drawn voxels remain.
        moving_matrix: ``(N + 1, N + 1)`` refinement-grid voxel matrix through which ``moving`` was
            resampled (the pre-alignment): ``moving(p)`` is the moving image at ``moving_matrix @ p``,
            and a moving point ``q`` is read from ``moving`` at ``inverse(moving_matrix) @ q``. MIND-SSC
            compares local structure along the grid's axes, so features of a moving head turned
            25 degrees against the fixed one differ where the anatomy matches; computed on the
            pre-aligned moving image they see both heads turned alike (docs/experiments/refinement.md).

    The images are kept on the head's box, :data:`HEAD_BOX_MARGIN` voxels around it: a point
    moved beyond that samples the box's edge, which is air as the grid beyond it is.
    """

    def __init__(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        to_working: torch.Tensor | None = None,
        similarity: str = "mind_ssc",
        mutual_information_weight: float = 0.05,
        mixed_precision: bool = False,
        margin: int = 3,
        moving_domain: ImageDomain | None = None,
        domain_margin: float = 2.0,
        moving_matrix: torch.Tensor | None = None,
    ):
        spatial_dims = fixed.dim()
        if to_working is None:
            to_working = torch.eye(spatial_dims + 1, dtype=torch.float64)
        head = _head_mask(fixed, moving, margin)
        # the grid cut to the head's box, the features' reach clear of it: no head voxel is compared beyond, and
        # there the features of the air cost a third of the pair's set-up on the bench's brain grids
        self.crop, self.shift = (slice(None),) * spatial_dims, torch.eye(spatial_dims + 1, dtype=torch.float64)
        if head.any():
            start, end = generate_spatial_bounding_box(head[None], margin=HEAD_BOX_MARGIN, allow_smaller=True)
            self.crop = tuple(slice(a, b) for a, b in zip(start, end))
            self.shift[:spatial_dims, spatial_dims] = torch.tensor(start, dtype=torch.float64)
            fixed, head = fixed[self.crop], head[self.crop]
            to_working = to_working.double().cpu() @ self.shift
            if moving_domain is not None:
                moving_domain = ImageDomain(moving_domain.to_source @ self.shift, moving_domain.shape)
        self.moving_domain, self.domain_margin = moving_domain, float(domain_margin)
        self.shape = fixed.shape
        self.similarity, self.dtype = similarity, torch.bfloat16 if mixed_precision else torch.float32
        self.fixed_features = self._features(fixed).flatten(0, -2)  # one row per voxel
        self.moving_features, self.to_moving_image = self._moving(moving, moving_matrix)
        self.mutual_information_weight = float(mutual_information_weight)
        self.mutual_information = ParzenMutualInformationLoss(num_bins=32)
        self.to_working = to_working.double().to(fixed.device)
        self.from_working = torch.linalg.inv(self.to_working).float()
        head = head.flatten()
        self.head = head.nonzero()[:, 0] if head.any() else torch.arange(head.numel(), device=fixed.device)
        # the working-grid voxel coordinates (N, H) of every head voxel of the refinement grid
        self.working_points = apply_affine(self.to_working, torch.stack(torch.unravel_index(self.head, self.shape)).double()).float()

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        """The features ``(*spatial, C + 1)`` of an image on the cut grid, channels last, its intensities riding
        along as the last channel (for the mutual information). Written into one tensor of :attr:`dtype`: a
        concatenation, a cast and a transposing copy, each of the whole volume, took about a quarter of the features' time."""
        with torch.no_grad():
            features = similarity_features(image[None, None].float(), self.similarity)[0]
            layout = torch.empty((*image.shape, features.shape[0] + 1), dtype=self.dtype, device=image.device)
            layout[..., :-1] = torch.movedim(features, 0, -1)
            layout[..., -1] = image
            return layout

    def _moving(self, moving: torch.Tensor, moving_matrix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The moving image's features on the cut grid, and the matrix from cut-grid voxels to where they are read."""
        to_moving_image = None
        if moving_matrix is not None:
            to_moving_image = torch.linalg.inv(self.shift) @ torch.linalg.inv(torch.as_tensor(moving_matrix, dtype=torch.float64).cpu()) @ self.shift
            to_moving_image = to_moving_image.float().to(moving.device)
        return self._features(moving[self.crop]), to_moving_image

    def with_moving(self, moving: torch.Tensor, moving_matrix: torch.Tensor | None = None) -> PairSimilarity:
        """The same fixed image, grid and head voxels with another copy of the moving image on the refinement grid
        (taken there through ``moving_matrix``): stages scored on both are compared on the same voxels, and the
        fixed image's features are not computed twice."""
        other = copy.copy(self)
        other.moving_features, other.to_moving_image = self._moving(moving, moving_matrix)
        return other

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Positions of ``count`` head voxels (in :attr:`working_points`), drawn at random with replacement."""
        return torch.randint(self.head.numel(), (count,), generator=generator, device=self.head.device)

    def displacements(self, ddf: torch.Tensor) -> torch.Tensor:
        """A working-grid voxel DDF ``(N, *W)`` at every head voxel of the refinement grid: ``(H, N)``, working voxels."""
        return sample_points(_channels_last(ddf.float()), self.working_points)

    def moved(self, chosen: torch.Tensor, displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refinement-grid voxels ``(N, K')`` where the head voxels ``chosen`` land, moved by ``displacement``
        ``(K, N)`` working voxels, and the ``K'`` voxels of ``chosen`` that land inside the moving image's domain."""
        moved = apply_affine(self.from_working, self.working_points.index_select(1, chosen) + displacement.T)
        if self.moving_domain is None:
            return moved, chosen
        kept = self.moving_domain.contains(moved.detach(), self.domain_margin).nonzero()[:, 0]
        return moved.index_select(1, kept), chosen.index_select(0, kept)

    def __call__(self, chosen: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        """The dissimilarity at the head voxels ``chosen`` moved by ``displacement`` ``(K, N)`` working voxels."""
        moved, chosen = self.moved(chosen, displacement)
        if not chosen.numel():  # nothing to compare: no pull either way
            return displacement.sum() * 0.0
        if self.to_moving_image is not None:
            moved = apply_affine(self.to_moving_image, moved)
        return _Dissimilarity.apply(moved, self, chosen)

    def value_and_gradient(self, moved: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dissimilarity at the head voxels ``chosen`` moved to the voxels ``moved`` ``(N, K)`` of ``moving``,
        and its gradient with respect to ``moved``, written out: under autograd the features' gather and the
        histogram cost twice as much, most of a refinement step."""
        warped, pull = sample_with_gradient(self.moving_features, moved, padding_mode="border")
        fixed = self.fixed_features.index_select(0, self.head.index_select(0, chosen)).float()
        difference = warped[:, :-1] - fixed[:, :-1]
        loss = difference.pow(2).mean()
        value_gradient = torch.zeros_like(warped)
        value_gradient[:, :-1] = 2 * difference / difference.numel()
        if self.mutual_information_weight:
            information, information_gradient = self.mutual_information.value_and_gradient(warped[:, -1], fixed[:, -1])
            loss = loss + self.mutual_information_weight * information
            value_gradient[:, -1] = self.mutual_information_weight * information_gradient
        return loss, pull(value_gradient)

    def score(self, ddf: torch.Tensor, num_samples: int = 65536, seed: int = 1) -> float:
        """The dissimilarity of a working-grid voxel DDF ``(N, *W)`` on one fixed sample of head voxels, to compare fields."""
        if not torch.isfinite(ddf).all():  # a broken network's field: worse than any other
            return float("inf")
        chosen = self.draw(num_samples, torch.Generator(device=self.head.device).manual_seed(seed))
        with torch.no_grad():
            displacement = sample_points(_channels_last(ddf.float()), self.working_points.index_select(1, chosen))
            if self.moved(chosen, displacement)[1].numel() * 16 < num_samples:  # too few to compare, as ITK's metrics judge
                return float("inf")
            return float(self(chosen, displacement))


class _Dissimilarity(torch.autograd.Function):
    """:meth:`PairSimilarity.value_and_gradient` as a function of the moved points that autograd chains to the residual."""

    @staticmethod
    def forward(ctx, moved: torch.Tensor, similarity: PairSimilarity, chosen: torch.Tensor) -> torch.Tensor:
        loss, gradient = similarity.value_and_gradient(moved.detach(), chosen)
        ctx.save_for_backward(gradient)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None, None


def _on_level(points: torch.Tensor, factor: int) -> torch.Tensor:
    """Working-grid voxel coordinates as coordinates of the grid ``factor`` times coarser (cell ``q`` is centred on
    working voxel ``factor * q + (factor - 1) / 2``, as average pooling with ``ceil_mode`` makes it)."""
    return (points - (factor - 1) / 2) / factor


def _resample_level(field: torch.Tensor, factor: int, shape: Sequence[int], new_factor: int) -> torch.Tensor:
    """A field ``(N, *L)`` on the grid ``factor`` times coarser than the working grid, linearly interpolated onto the
    grid of ``shape`` that is ``new_factor`` times coarser (1: the working grid itself), edges continued."""
    working = voxel_grid(shape, device=field.device) * new_factor + (new_factor - 1) / 2
    return sample(field[None], _on_level(working, factor)[None], padding_mode="border")[0]


def _diffusion(field: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean squared forward difference of a field ``(N, *L)`` in working voxels sampled every ``factor`` working voxels,
    per working voxel: the strain, so that one weight means the same at every level."""
    return sum((torch.diff(field, dim=axis) / factor).pow(2).mean() for axis in range(1, field.dim()))


def _folding(field: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean of ``relu(0.1 - det J)^2`` over a 3D field ``(3, *L)`` in working voxels sampled every ``factor`` voxels.

    ``J`` is the Jacobian of ``w -> w + u(w)`` from forward differences. Zero where the field
    keeps every volume above a tenth, growing as it nears folding (``det J <= 0``): the diffusion
    penalty alone lets a large residual fold where the images pull hard.
    """
    if field.shape[0] != 3:
        return field.new_zeros(())
    crop = tuple(slice(0, s - 1) for s in field.shape[1:])
    gradient = [torch.diff(field, dim=axis + 1)[(slice(None), *crop)] / factor for axis in range(3)]  # d u / d w_axis
    (a, b, c), (d, e, f), (g, h, i) = ([gradient[col][row] + (row == col) for col in range(3)] for row in range(3))
    determinant = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return torch.relu(0.1 - determinant).pow(2).mean()


def refine_ddf(
    similarity: PairSimilarity,
    ddf: torch.Tensor,
    iterations: int = 30,
    levels: Sequence[int] = (8, 4),
    regularizer_weight: float = 0.7,
    folding_weight: float = 100.0,
    learning_rate: float = 0.1,
    num_samples: int = 8192,
    seed: int = 0,
) -> torch.Tensor:
    """The working-grid voxel DDF ``ddf + r`` ``(N, *W)`` whose residual ``r`` is optimised on this pair.

    Args:
        similarity: the pair on the refinement grid (:class:`PairSimilarity`).
        ddf: the network's voxel DDF ``(N, *W)`` on the working grid, pre-alignment included
            (pull: the moving point of working voxel ``w`` is ``w + ddf(w)``).
        iterations: Adam steps at each level; 0 returns ``ddf`` itself.
        levels: the residual's grid at each level, as a factor of the working grid, coarse to
            fine; each level starts from the previous one's residual.
        regularizer_weight: weight of the diffusion penalty on the strain of the field minus its
            own affine (:func:`~regplugins.layers.split_affine` of ``ddf``). On the whole field a
            pre-alignment's turn pulled the residual at the grid's edges: on 12 heads turned 50 to
            166 degrees, 0.60 degrees and 1.33 mm off against 0.06 and 0.81 (gradient fusion).
        folding_weight: weight of the penalty on Jacobian determinants below 0.1 (:func:`_folding`).
        learning_rate: Adam's step, in working voxels.
        num_samples: head voxels of the refinement grid compared at each step; twice as many
            cost 0.3-0.4 s more per pair and gained 0.002-0.005 Dice on the tuning pairs.
        seed: of those draws, so that a pair always gets the same field.

    The defaults (with a 3 mm working grid, a residual grid of 24 mm and then of 12 mm) were
    chosen on 16 tuning pairs of the benchmark's four kinds, other seeds than the benchmark's
    (docs/experiments/refinement.md): a finer last level (6 mm) fitted the skull of some
    MR/MR pairs to the wrong edge.
    """
    if int(iterations) < 0:
        raise ValueError(f"refine_iterations must be 0 or more, got {iterations}.")
    if not iterations:
        return ddf
    spatial_dims, shape = ddf.shape[0], ddf.shape[1:]
    pool = (F.avg_pool2d, F.avg_pool3d)[spatial_dims - 2]
    ddf = ddf.detach().float()
    deformation = split_affine(ddf[None])[1][0]
    network_displacement = similarity.displacements(ddf)
    generator = torch.Generator(device=ddf.device).manual_seed(int(seed))
    residual, previous = None, None
    with torch.enable_grad():
        for factor in levels:
            ddf_level, deformation_level = (pool(f[None], factor, ceil_mode=True)[0] if factor > 1 else f for f in (ddf, deformation))
            if residual is None:
                residual = torch.zeros_like(ddf_level)
            else:
                residual = _resample_level(gaussian_smooth(residual.detach(), [1.0] * spatial_dims), previous, ddf_level.shape[1:], factor)
            residual.requires_grad_(True)
            optimizer = Adam([residual], lr=learning_rate)
            for _ in range(int(iterations)):
                optimizer.zero_grad()
                smooth = gaussian_smooth(residual, [1.0] * spatial_dims)
                chosen = similarity.draw(num_samples, generator)
                at_level = _on_level(similarity.working_points.index_select(1, chosen), factor)
                displacement = network_displacement.index_select(0, chosen) + sample_points(_channels_last(smooth), at_level)
                strain = regularizer_weight * _diffusion(deformation_level + smooth, factor)
                loss = similarity(chosen, displacement) + strain + folding_weight * _folding(ddf_level + smooth, factor)
                loss.backward()
                optimizer.step()
            previous = factor
    residual = _resample_level(gaussian_smooth(residual.detach(), [1.0] * spatial_dims), previous, shape, 1)
    return ddf + residual


def affine_beyond_moving(
    similarity: PairSimilarity, ddf: torch.Tensor, matrix: torch.Tensor, blend: int, ridge: float, edge: float = 2.0
) -> tuple[torch.Tensor, float]:
    """The working-grid voxel DDF ``ddf`` ``(N, *W)`` made affine where it takes fixed voxels beyond the moving
    image's data, and the fraction of the compared head voxels whose moving point has data.

    Where the moving image shows part of the head (a thick-slice MR of the brain against a CT of
    the whole head), nothing tells the network or the refinement where the rest goes: their
    fields there extrapolate, several mm off (docs/experiments/refinement.md), where ANTs'
    field is its affine. Here the field there is the pre-alignment ``matrix`` (working voxels)
    corrected by the affine that best fits, by least squares, what the field changed over the
    fixed image's tissue that the moving image shows, ``edge`` of its voxels clear of its edges
    (where its data fades); it takes over within ``blend`` working voxels beyond that, and the
    field elsewhere is unchanged. ``ridge`` (working voxels squared) shrinks the correction
    along directions in which the covered tissue is thin: along one in which it spreads
    ``sqrt(ridge)`` voxels (standard deviation), it counts half. A field whose head is all
    covered, or less than a sixteenth of it, is returned as it is.
    """
    domain = similarity.moving_domain
    if domain is None:
        return ddf, 1.0
    n, shape = ddf.shape[0], ddf.shape[1:]
    from_working = similarity.from_working.double()
    points = similarity.working_points.double()
    moved = points + similarity.displacements(ddf).double().T
    on_refinement_grid = apply_affine(from_working, moved)
    fraction = domain.contains(on_refinement_grid).double().mean().item()
    if fraction == 1.0:
        return ddf, fraction
    tissue = similarity.fixed_features.index_select(0, similarity.head)[:, -1].float() > 0.1
    covered = (domain.contains(on_refinement_grid, source_margin=edge) & tissue).nonzero()[:, 0]
    if covered.numel() * 16 < points.shape[1]:
        return ddf, fraction
    points, moved = points.index_select(1, covered), moved.index_select(1, covered)
    change = moved - apply_affine(matrix.double(), points)
    centre, mean_change = points.mean(1, keepdim=True), change.mean(1, keepdim=True)
    spread = (points - centre) @ (points - centre).T / points.shape[1]
    linear = ((change - mean_change) @ (points - centre).T / points.shape[1]) @ torch.linalg.inv(spread + ridge * torch.eye(n).to(spread))
    corrected = matrix.double().clone()
    corrected[:n, :n] += linear
    corrected[:n, n] += (mean_change - linear @ centre)[:, 0]
    affine_field = affine_to_ddf(corrected[None], shape)[0].to(ddf)
    grid_moved = apply_affine(from_working, (voxel_grid(shape, device=ddf.device) + ddf).flatten(1).double())
    inside = domain.contains(grid_moved).reshape(1, 1, *shape).to(ddf)
    # the chessboard distance d in voxels to the domain, as min(d, blend) / blend
    weight = torch.zeros_like(inside)
    for _ in range(blend):
        weight += 1 - inside
        inside = _dilate(inside, 1)
    weight = weight[0] / blend
    return (1 - weight) * ddf + weight * affine_field, fraction
