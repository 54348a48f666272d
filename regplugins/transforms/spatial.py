"""Spatial dictionary transforms MONAI lacks: anti-aliasing before resampling to the working grid, warping by a
predicted voxel DDF, the affine pre-alignment, and the refinement of a predicted field that keeps the best stage."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import AsDiscreted, Compose, CopyItemsd, CropForeground, MapTransform, Spacing, SpatialCrop, ToDeviced
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep, look_up_option

from regplugins.alignment import (
    FINISH_ITERATIONS,
    LEVELS,
    PREALIGNMENTS,
    NativeImage,
    finish_affine,
    fit_affine,
    mutual_information,
    rotation_vector,
    searched_turn,
    warp_affine,
)
from regplugins.io import pair_output_name
from regplugins.layers import (
    ImageDomain,
    affine_to_ddf,
    apply_affine,
    cached_warp,
    gaussian_smooth,
    invert_ddf,
    resample_ddf,
    sample_affine,
    voxel_grid,
    warp_physical,
)
from regplugins.refinement import MOVING_GRID_OFFSET, SIMILARITIES, PairSimilarity, affine_beyond_moving, head_foreground, refine_ddf
from regplugins.transforms.intensity import NormalizeModalityd
from regplugins.utils import as_flag

logger = logging.getLogger(__name__)


class AntiAliasd(MapTransform):
    """Gaussian smoothing of images that are about to be resampled to the coarser spacing ``pixdim``.

    MONAI's ``Spacingd`` and ``ResampleToMatchd`` interpolate: going from 1.5 mm to 3 mm they keep
    every other voxel, with its noise, and drop the rest. Smoothing first makes a working voxel
    the average of the voxels it covers, as in a scan acquired at that spacing, and similarity
    measures such as MIND then find the true alignment far more clearly (the
    fcn_multires_selfsup_reg model card shows what it did to training). Along an
    array axis of spacing ``s`` resampled to ``t = f * s`` the added sigma is ``sqrt(f^2 - 1) / 2``
    voxels, so that a voxel's own blur (sigma ``s / 2``) grows to a working voxel's (``t / 2``);
    ANTs smooths by about ``f / 2`` when it shrinks by ``f``. Axes already as coarse are left alone.

    Args:
        keys: images (channel first, with their affine) to smooth.
        pixdim: the working spacing, one value or one per RAS axis (as ``Spacingd`` takes it);
            each array axis takes the value of the RAS axis it runs along.
    """

    def __init__(self, keys: KeysCollection, pixdim: Sequence[float] | float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.pixdim = pixdim

    def sigma(self, affine: torch.Tensor) -> list[float]:
        """The added sigma in voxels along each array axis of an image with this affine."""
        n = affine.shape[0] - 1
        linear = torch.as_tensor(affine, dtype=torch.float64)[:n, :n]
        target = ensure_tuple_rep(self.pixdim, n)
        sigmas = []
        for axis in range(n):
            factor = float(target[int(linear[:, axis].abs().argmax())]) / float(linear[:, axis].norm())
            sigmas.append(max(factor**2 - 1.0, 0.0) ** 0.5 / 2.0)
        return sigmas

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            sigma = self.sigma(image.affine)
            if any(sigma):
                smoothed = gaussian_smooth(convert_to_tensor(image, dtype=torch.float32, track_meta=False), sigma)
                d[key] = convert_to_dst_type(smoothed, dst=image, dtype=torch.float32)[0]
        return d


class Warpd(MapTransform):
    """Warp each key ``(C, *spatial)`` by the voxel DDF at ``ddf_key``.

    Writes ``<key><suffix>``; ``mode`` is per key, ``"nearest"`` for label maps. Used by the
    validation post-processing to move moving labels onto the fixed image. By default each key
    lies on the DDF's grid. With ``reference_key`` the DDF, predicted on the grid of
    ``ddf_grid_key``, is first taken to the grid of ``reference_key`` through both affines, and
    each key is sampled on its own grid: labels scored at their full resolution, not resampled to
    a coarse working grid, as a benchmark scores them.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ddf_key: str = "pred",
        mode: str | tuple[str, ...] = "bilinear",
        suffix: str = "_warped",
        reference_key: str | None = None,
        ddf_grid_key: str = "image",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ddf_key, self.suffix = ddf_key, suffix
        self.reference_key, self.ddf_grid_key = reference_key, ddf_grid_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ddf = torch.as_tensor(d[self.ddf_key])[None].float()
        if self.reference_key is not None:
            reference = d[self.reference_key]
            reference_affine = torch.as_tensor(reference.affine, dtype=torch.float64, device=ddf.device)
            ddf_affine = torch.as_tensor(d[self.ddf_grid_key].affine, dtype=torch.float64, device=ddf.device)
            field = resample_ddf(ddf.double(), ddf_affine, reference_affine, reference.shape[1:])
        for key, mode in self.key_iterator(d, self.mode):
            image = torch.as_tensor(d[key])[None].float().to(ddf.device)
            if self.reference_key is None:
                d[f"{key}{self.suffix}"] = cached_warp(mode, "border")(image, ddf)[0]
            else:
                key_affine = torch.as_tensor(d[key].affine, dtype=torch.float64, device=ddf.device)
                d[f"{key}{self.suffix}"] = warp_physical(image, key_affine, field.float(), reference_affine, mode=mode, padding_mode="border")[0]
        return d


def label_overlap_postprocessing(
    num_labels: int, device: str | torch.device, label_keys: Sequence[str] = ("moving_label", "fixed_label"), on_label_grid: bool = False
) -> Compose:
    """A train config's validation post-processing: the moving labels warped by the predicted field, both label maps one-hot.

    For ``MeanDice`` on ``<moving label key>_warped`` and ``fixed_label_onehot``. With
    ``on_label_grid`` the labels keep a grid of their own (finer than the network's) and the
    field goes onto the fixed labels' grid (:class:`Warpd` ``reference_key``), as a benchmark scores them.
    """
    moving, fixed = label_keys
    return Compose(
        [
            ToDeviced([moving, fixed], device=device),
            Warpd(moving, ddf_key="pred", mode="nearest", reference_key=fixed if on_label_grid else None),
            CopyItemsd(fixed, names="fixed_label_onehot"),
            AsDiscreted([f"{moving}_warped", "fixed_label_onehot"], to_onehot=num_labels),
        ]
    )


def keep_best_stage(pair_name: str, scores: Mapping[str, float], measure: str, tolerance: float = 0.0) -> str:
    """The last stage whose score is within ``tolerance`` of the lowest, with a warning for each stage that did worse than the best before it.

    ``scores`` runs in the pipeline's order from ``"none"``; lower is more similar. A later stage
    refines an earlier one, so a tie, or a difference the measure cannot resolve (``tolerance``),
    goes to it. Never worse without saying so: the log names the pair, the stage and both scores.
    """
    lowest = min(scores.values())
    kept = [stage for stage in scores if scores[stage] <= lowest + tolerance][-1]
    why = "" if scores[kept] == lowest else f", within {tolerance} of the best"
    best = "none"
    for stage in list(scores)[1:]:
        if scores[stage] > scores[best]:
            logger.warning(
                f"{pair_name}: the {stage} left the images less similar than the {best} "
                f"({measure} {scores[stage]:.5f} > {scores[best]:.5f}); kept the {kept}{why}."
            )
        else:
            best = stage
    return kept


class CropHeadd(MapTransform):
    """Crop ``keys`` (the fixed image on the working grid) to its head and ``margin`` mm around it, ``k_divisible`` voxels a side.

    A head fills two fifths of a 256 mm field of view; the pre-alignment, the network and the
    refinement cost in proportion to their grids, and what lies beyond the head is air. The
    head is :func:`~regplugins.refinement.head_foreground`; the field saved on the fixed image's
    grid goes on as its best-fitting affine beyond the crop (:func:`~regplugins.layers.resample_ddf`). A grid
    that the head fills is only padded to ``k_divisible``, as ``DivisiblePadd`` pads it.
    """

    def __init__(self, keys: KeysCollection, margin: float = 12.0, k_divisible: Sequence[int] | int = 1, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.margin, self.k_divisible = float(margin), k_divisible

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            margin = [math.ceil(self.margin / float(s)) for s in affine_to_spacing(d[key].affine)]
            crop = CropForeground(select_fn=head_foreground, margin=margin, allow_smaller=True, k_divisible=self.k_divisible)
            d[key] = crop(d[key])
        return d


def resampled_box(image: MetaTensor, spacing: float, affine: torch.Tensor, low: Sequence[float], high: Sequence[float]) -> MetaTensor:
    """``image`` ``(1, *spatial)`` at ``spacing`` mm in its own orientation (MONAI's ``Spacing``), only on the voxels
    that cover the box from ``low`` to ``high`` (voxel coordinates of the grid ``affine``), one voxel clear.

    MONAI's lazy ``Spacing`` and crop give the box's grid, and the image is resampled there alone (on a head's
    box the whole grid's resampling cost the refinement half again as much, 1.5 mm from 2 mm images), through
    :func:`~regplugins.layers.sample_affine`: separable, a fifth of the time of MONAI's resampling, the same values
    within 1e-5."""
    pending = Spacing(pixdim=spacing, mode="bilinear", lazy=True)(image)
    corners = torch.cartesian_prod(*[torch.tensor([a - 1.0, b + 1.0], dtype=torch.float64) for a, b in zip(low, high)]).T
    grid = torch.as_tensor(pending.peek_pending_affine(), dtype=torch.float64)
    points = apply_affine(torch.linalg.inv(grid) @ torch.as_tensor(affine, dtype=torch.float64), corners)
    start = [max(0, math.floor(value)) for value in points.min(1).values.tolist()]
    end = [min(int(size), math.ceil(value) + 1) for size, value in zip(pending.peek_pending_shape(), points.max(1).values.tolist())]
    box = SpatialCrop(roi_start=start, roi_end=end, lazy=True)(pending)
    box_affine = torch.as_tensor(box.peek_pending_affine(), dtype=torch.float64)
    to_image = torch.linalg.inv(torch.as_tensor(image.affine, dtype=torch.float64)) @ box_affine
    volume = convert_to_tensor(image, dtype=torch.float32, track_meta=False)[None]
    return MetaTensor(sample_affine(volume, to_image.float(), box.peek_pending_shape(), padding_mode="border")[0], affine=box_affine)


# every image, CT included, between these percentiles for the finish on the native grids, as ANTs winsorises before
# Mattes MI: the CT window of NormalizeModalityd (-200 to 300 HU) saturates the skull, and left the rigid finish 0.09
# degrees off on CT/T1 heads (0.03 so; docs/experiments/head_ct_mr_rigid_reg.md)
_NATIVE_INTENSITIES = NormalizeModalityd(keys="image", modality="mr", mr_percentiles=(0.5, 99.5))
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def voxel_to_lps(affine) -> np.ndarray:
    """The 4x4 from voxels of a grid of (RAS) ``affine`` to LPS mm: ``G A G^-1`` takes a voxel matrix ``A`` of
    that grid to the world matrix that :func:`~regplugins.alignment.finish_affine` and ``rigid.tfm`` use."""
    return _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


def native_image(path: str | Path) -> NativeImage:
    """The image at ``path`` on its own grid as :func:`~regplugins.alignment.finish_affine` takes it:
    intensities between its 0.5 and 99.5 percentiles, voxel-to-LPS affine."""
    native = nib.load(str(path))
    image = torch.from_numpy(np.ascontiguousarray(native.dataobj, dtype=np.float32).reshape(native.shape[:3]))
    return NativeImage(_NATIVE_INTENSITIES.normalize(image, "mr"), torch.from_numpy(_RAS_TO_LPS @ native.affine))


def _native_images(*images) -> tuple[NativeImage, ...] | None:
    """``images`` read again from their files (:func:`native_image`), or None when one was not loaded from a file."""
    paths = [image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None for image in images]
    return tuple(native_image(path) for path in paths) if all(paths) else None


class AffineAlignd(MapTransform):
    """Pre-align ``keys`` (the moving image, on the fixed image's grid) to ``fixed_key`` by :func:`fit_affine`.

    The global stage that ANTs runs before SyN and that the papers' networks assume was done:
    the moving image is replaced by its affinely aligned copy and the voxel matrix is stored at
    ``matrix_key``, for :class:`ComposeAffined` to fold into the network's field. ``transform``
    ``"none"`` stores the identity and leaves the image as it is. ``label_keys`` (the moving
    labels of a training pair, on the same grid) follow the image by nearest-neighbour
    sampling, so that a network trained on pre-aligned pairs is scored on them as it registers.
    ``moving_domain_key`` names the moving image as loaded (its own grid): the fit then skips
    the voxels whose moving point falls outside that grid (:class:`~regplugins.layers.ImageDomain`).
    ``spacing`` (mm) is the finest level of the fit where the grid is finer: its levels are then
    those of a grid of that spacing, 12, 6 and 3 mm by default, whatever the bundle's working
    grid. On a 2 mm grid (levels of 8, 4 and 2 mm) a moving MR of thick slices over part of the
    head was pre-aligned 8.4 mm off on average, against 5.2 mm with levels of 3 mm and up
    (docs/experiments/refinement.md); on whole heads the two were within 0.1 mm. Where the grid is
    coarser (FIRE's 4 mm), the fit goes on at ``spacing`` on the native images when they come from
    files, the first level of ``finish`` below: ended at 4 mm, FIRE's fit left two of four fixed
    MR of 5 mm slices over part of the head 3.5 and 16 mm off (docs/benchmarks.md).
    ``finish`` then takes the fit to the images' own grids (:func:`~regplugins.alignment.finish_affine`
    with its defaults: 40 steps on boxes of about 3 mm and 80 on the native voxels; with half as many the
    stretch of FIRE's affine pairs stopped short, 0.004 Dice below the full count), read again from
    their files (the fixed image's and ``moving_domain_key``'s or the moving one's ``filename_or_obj``;
    without files the fit stays as it is): 0.01 to 0.02 Dice and 0.1 to 0.2 mm closer than the
    fit alone on CT/T1 heads (docs/experiments/fire_inverse_consistent_reg.md).
    ``search_turns`` starts the fit from the best of eleven turns, as the rigid bundle's pre-alignment
    does (:func:`~regplugins.alignment.searched_turn`, each start fitted rigidly at the coarsest level
    and scored on the images' own grids when they come from files): for a head scanned in another
    position or with a wrong orientation in its header, which a fit from the headers' pose does not
    find. The fit goes on from the kept screening fit's turn; where no turn scores clearly better, that
    is a fit from the headers' pose.
    """

    # the search's screening fits: 60 steps of 8,192 voxels before 0.29.0; these kept the same pose on the far,
    # turned and ordinary bench pairs, every fit within 0.3 degrees of a known turn, in a fifth of the time
    # (experiments/search_screen_probe.py, docs/experiments/refinement.md)
    screen_iterations: int = 30
    screen_samples: int = 2048

    def __init__(
        self,
        keys: KeysCollection,
        fixed_key: str = "fixed",
        matrix_key: str = "prealign_matrix",
        transform: str = "affine",
        label_keys: KeysCollection = (),
        moving_domain_key: str | None = None,
        spacing: float = 3.0,
        finish: bool = False,
        search_turns: bool = False,
        allow_missing_keys: bool = False,
        **fit_args,
    ):
        super().__init__(keys, allow_missing_keys)
        if transform not in PREALIGNMENTS:
            raise ValueError(f"transform must be one of {PREALIGNMENTS}, got {transform!r}.")
        self.fixed_key, self.matrix_key, self.transform, self.fit_args = fixed_key, matrix_key, transform, fit_args
        self.moving_domain_key, self.spacing = moving_domain_key, float(spacing)
        self.finish, self.search_turns = as_flag(finish, "finish"), as_flag(search_turns, "search_turns")
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        fixed = d[self.fixed_key]
        spatial_dims = fixed.dim() - 1
        matrix = torch.eye(spatial_dims + 1, dtype=torch.float64)
        for key in self.key_iterator(d):
            if self.transform != "none":
                domain = None
                if self.moving_domain_key is not None:
                    source = d[self.moving_domain_key]
                    domain = ImageDomain.between(fixed.affine, source.affine, source.shape[1:])
                fit_args = self._fit_args(fixed)
                finish = self.finish and spatial_dims == 3
                to_spacing = spatial_dims == 3 and self._grid_spacing(fixed) > self.spacing * 1.001
                # read once for the search's scores and the finish
                natives = _native_images(fixed, d[self.moving_domain_key or key]) if self.search_turns or finish or to_spacing else None
                if self.search_turns:
                    fit_args["rotation"] = self._start(fixed, d[key], natives, domain, fit_args)
                matrix = fit_affine(fixed[0], d[key][0], transform=self.transform, moving_domain=domain, **fit_args)
                if (finish or to_spacing) and natives is not None:
                    matrix = self._finished(matrix, fixed, *natives, to_native_voxels=finish)
                for moved, mode in [(key, "bilinear")] + [(label, "nearest") for label in self.label_keys if label in d]:
                    aligned = warp_affine(convert_to_tensor(d[moved], dtype=torch.float32, track_meta=False)[None], matrix, mode=mode)[0]
                    d[moved] = MetaTensor(aligned, meta=d[moved].meta) if isinstance(d[moved], MetaTensor) else aligned
            d[self.matrix_key] = matrix
        return d

    def _start(
        self, fixed: MetaTensor, moving: torch.Tensor, natives: tuple[NativeImage, NativeImage] | None, domain, fit_args: dict
    ) -> torch.Tensor:
        """The turn of the screening fit that :func:`~regplugins.alignment.searched_turn` keeps (voxel axes), screened by
        rigid fits at the coarsest level, all eleven at once, and scored on the ``natives`` (:func:`_native_images`).

        :attr:`screen_iterations` steps of :attr:`screen_samples` voxels each.
        """
        grid = voxel_to_lps(fixed.affine)
        images = [convert_to_tensor(image[0], dtype=torch.float32, track_meta=False) for image in (fixed, moving)]
        coarsest = {
            **fit_args,
            "levels": fit_args.get("levels", LEVELS)[:1],
            "iterations": (self.screen_iterations,),
            "num_samples": self.screen_samples,
        }

        def screen(rotations: torch.Tensor) -> np.ndarray:
            voxels = fit_affine(*images, transform="rigid", moving_domain=domain, **{**coarsest, "rotation": rotations})
            return grid @ voxels.numpy() @ np.linalg.inv(grid)

        # images in memory are scored on the working grid
        native_fixed, native_moving = natives or (NativeImage(image, torch.from_numpy(grid)) for image in images)
        _, screened = searched_turn(*images, screen, lambda matrices: mutual_information(native_fixed, native_moving, matrices))
        return rotation_vector(torch.from_numpy(np.linalg.inv(grid) @ screened @ grid)[:3, :3])

    def _finished(
        self, matrix: torch.Tensor, fixed: MetaTensor, native_fixed: NativeImage, native_moving: NativeImage, to_native_voxels: bool = True
    ) -> torch.Tensor:
        """The working-grid voxel ``matrix`` (3D) after :func:`~regplugins.alignment.finish_affine` on the native images:
        its whole pyramid, or with ``to_native_voxels`` false its first level alone, at :attr:`spacing`."""
        grid = voxel_to_lps(fixed.affine)
        start = grid @ matrix.numpy() @ np.linalg.inv(grid)
        levels = {} if to_native_voxels else {"level_spacings_mm": (self.spacing,), "iterations": FINISH_ITERATIONS[:1]}
        found = finish_affine(native_fixed, native_moving, start, native_fixed.center_mm, transform=self.transform, **levels)
        return torch.from_numpy(np.linalg.inv(grid) @ found @ grid)

    @staticmethod
    def _grid_spacing(fixed: torch.Tensor) -> float:
        """The finest spacing of the working grid, in mm (1 for an image without an affine, as MONAI takes it)."""
        return float(affine_to_spacing(fixed.affine).min()) if isinstance(fixed, MetaTensor) else 1.0

    def _fit_args(self, fixed: torch.Tensor) -> dict:
        """The fit's settings, its levels scaled to ``spacing`` where ``fixed``'s grid is finer."""
        args = dict(self.fit_args)
        if isinstance(fixed, MetaTensor):
            scale = self.spacing / self._grid_spacing(fixed)
            if scale > 1.001:  # a grid finer by a rounding error keeps whole factors (boxes of voxels averaged)
                args["levels"] = [round(level * scale, 3) for level in args.get("levels", LEVELS)]
        return args


class ComposeAffined(MapTransform):
    """Fold a pre-alignment matrix into voxel DDFs ``keys`` ``(N, *spatial)``: ``p -> A (p + u(p)) - p``.

    The network saw the moving image already resampled at ``A p``, so the field that takes the
    original moving image to the fixed one is the network's field followed by the matrix, and
    it is exact everywhere (no resampling of the affine part).
    """

    def __init__(self, keys: KeysCollection, matrix_key: str = "prealign_matrix", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.matrix_key = matrix_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        matrix = torch.as_tensor(d[self.matrix_key]).double()
        for key in self.key_iterator(d):
            ddf = torch.as_tensor(d[key]).double()
            grid = voxel_grid(ddf.shape[1:], device=ddf.device, dtype=torch.float64)
            d[key] = (apply_affine(matrix.to(ddf.device), grid + ddf) - grid).float()
        return d


class RefineDisplacementd(MapTransform):
    """Refine the working-grid voxel DDF at ``keys`` on the pair itself, and keep the stage that aligns best.

    The DDF is the network's field with the pre-alignment folded in (after :class:`ComposeAffined`).
    Both images are taken from their normalised copies at native resolution (``fixed_key``,
    ``moving_key``, kept before the working grid's resampling) to the refinement grid, the fixed
    image's orientation at ``spacing`` mm, and :func:`regplugins.refinement.refine_ddf` runs
    ``iterations`` steps per level there. A user is never handed a result worse than its start
    without knowing: the dissimilarity of :class:`regplugins.refinement.PairSimilarity` is
    measured for every stage, ``none`` (the images as they lie, features of the moving image as
    it lies), ``prealignment``, ``network`` and ``refinement`` (features of the moving image
    pre-aligned, :meth:`pair_similarity`); the refinement starts from the best of the first
    three, on that stage's features, and the field kept is the best of all, later stages
    winning ties. A stage that made the pair less similar
    is reported in the log, and ``quality_key`` holds the record that the saver writes to
    ``quality.json``. With ``iterations`` 0 the network's field is kept unchanged unless it
    aligns worse than its start. When refining, where the kept field takes fixed voxels beyond the
    moving image's data, it turns affine over ``beyond_moving_blend`` mm
    (:func:`~regplugins.refinement.affine_beyond_moving`), and the record says how much of the head
    the moving image covers.

    Args:
        keys: the working-grid voxel DDF (``pred``).
        fixed_key, moving_key: the normalised images at native resolution, with their affines (not named
            ``fixed_...``: MONAI's ``Spacingd`` on ``fixed`` takes every key so prefixed for its metadata).
        working_grid_key: an image on the working grid (its affine).
        matrix_key: the pre-alignment's voxel matrix on the working grid.
        spacing: of the refinement grid, in mm.
        iterations, regularizer_weight, num_samples: of :func:`~regplugins.refinement.refine_ddf`.
        step: Adam's step in mm (``refine_ddf``'s ``learning_rate`` is in working voxels), so that the
            refinement does the same on every working grid. Each bundle sets its own (``refine_step``):
            CT/T1 pairs refine best with longer steps, MR/MR pairs with shorter ones, and no single
            step suited all four deformable bundles (docs/experiments/refinement.md, last section).
        control_spacing: the spacing in mm of the residual's grid at each level, coarse to fine (its
            ``levels``, as whole multiples of the working grid's spacing).
        similarity, mutual_information_weight, mixed_precision: of :class:`~regplugins.refinement.PairSimilarity`.
        beyond_moving_blend: mm beyond the moving image's domain over which the field turns affine;
            0 leaves it as the network and the refinement made it. The affine's correction of the
            pre-alignment counts half along a direction in which the covered head spreads 5 mm.
        reach: mm beyond where the pre-alignment and the network take the working grid that the
            refinement's grid covers (:meth:`pair_similarity`).
        quality_key: where the record goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        fixed_key: str = "native_fixed",
        moving_key: str = "native_moving",
        working_grid_key: str = "fixed",
        matrix_key: str = "prealign_matrix",
        spacing: float = 1.5,
        iterations: int = 30,
        control_spacing: Sequence[float] = (24.0, 12.0),
        similarity: str = "mind_ssc",
        mutual_information_weight: float = 0.05,
        regularizer_weight: float = 0.7,
        num_samples: int = 8192,
        step: float = 0.2,
        mixed_precision: bool = False,
        beyond_moving_blend: float = 20.0,
        reach: float = 10.0,
        quality_key: str = "quality",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.beyond_moving_blend, self.reach = float(beyond_moving_blend), float(reach)
        if int(iterations) < 0:
            raise ValueError(f"refine_iterations must be 0 or more, got {iterations}.")
        self.similarity = look_up_option(similarity, SIMILARITIES)
        self.fixed_key, self.moving_key, self.working_grid_key, self.matrix_key = fixed_key, moving_key, working_grid_key, matrix_key
        self.spacing, self.quality_key, self.mixed_precision = float(spacing), quality_key, mixed_precision
        self.mutual_information_weight = mutual_information_weight
        self.control_spacing = [float(s) for s in control_spacing]
        self.step = float(step)
        self.refine_args = {"iterations": int(iterations), "regularizer_weight": regularizer_weight, "num_samples": num_samples}

    def pair_similarity(self, d: Mapping, fields: Sequence[torch.Tensor], matrices: Sequence[torch.Tensor]) -> list[PairSimilarity]:
        """Both images on the refinement grid (anti-aliased first where it is coarser), as one :class:`PairSimilarity`
        for each pre-alignment in ``matrices``, all on the first's grid and head voxels.

        The grid is the fixed image's at ``spacing`` mm, cut to where the working-grid voxel DDFs
        ``fields`` (the finite ones; no registration, the working grid itself, among them) take the
        working grid, ``reach`` mm around: the refinement neither compares nor moves a point beyond
        that, and on a head cut out of a large field of view (:class:`CropHeadd`) its images'
        features cost about half as much. The moving image goes there through each pre-alignment
        matrix (working voxels), in one resampling of the native image, so that its features
        see the head turned as the fixed one (``PairSimilarity``'s ``moving_matrix``), on that grid
        moved by :data:`~regplugins.refinement.MOVING_GRID_OFFSET` of a voxel along each axis.
        """
        images = AntiAliasd([self.fixed_key, self.moving_key], pixdim=self.spacing)({k: d[k] for k in (self.fixed_key, self.moving_key)})
        working = d[self.working_grid_key]
        reach = self.reach / float(affine_to_spacing(working.affine).min())
        moved = torch.cat(
            [(voxel_grid(field.shape[1:], device=field.device) + field).flatten(1) for field in fields if torch.isfinite(field).all()], 1
        )
        low, high = (moved.min(1).values - reach).tolist(), (moved.max(1).values + reach).tolist()
        box = resampled_box(images[self.fixed_key], self.spacing, working.affine, low, high)
        fixed, fixed_affine = box.as_tensor()[0], box.affine.double()
        working_affine = torch.as_tensor(working.affine, dtype=torch.float64)
        to_working = torch.linalg.inv(working_affine) @ fixed_affine
        offset = torch.eye(to_working.shape[0], dtype=torch.float64)
        offset[:-1, -1] = MOVING_GRID_OFFSET
        device = fields[0].device
        moving_image = convert_to_tensor(images[self.moving_key], dtype=torch.float32, track_meta=False)[None]
        working_to_moving_voxels = torch.linalg.inv(torch.as_tensor(images[self.moving_key].affine, dtype=torch.float64)) @ working_affine

        def moving_through(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # the moving image where the pre-alignment takes each voxel of the offset grid: one matrix from those voxels
            # to the moving image's, composed in double precision, and one resampling (MONAI's ResampleToMatch of a
            # moved header, the same values within 1e-5, took 0.23 s against 0.18 on a 170 x 162 x 170 box through
            # grid_sample; through no turn, separable, 0.03 s)
            to_prealigned = matrix.double().cpu() @ to_working @ offset  # offset-grid voxels to working voxels, pre-aligned
            moving = sample_affine(moving_image, (working_to_moving_voxels @ to_prealigned).float(), fixed.shape)[0, 0].to(device)
            return moving, torch.linalg.inv(to_working) @ to_prealigned

        native_moving = d[self.moving_key]
        domain = ImageDomain.between(fixed_affine, native_moving.affine, native_moving.shape[1:])
        fixed = fixed.to(device)
        moving, moving_matrix = moving_through(matrices[0])
        first = PairSimilarity(
            fixed,
            moving,
            to_working,
            self.similarity,
            self.mutual_information_weight,
            self.mixed_precision,
            moving_domain=domain,
            moving_matrix=moving_matrix,
        )
        return [first] + [first.with_moving(*moving_through(matrix)) for matrix in matrices[1:]]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            network = convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)
            matrix = torch.as_tensor(d[self.matrix_key], dtype=torch.float64, device=network.device)
            fields = {
                "none": torch.zeros_like(network),
                "prealignment": affine_to_ddf(matrix[None], network.shape[1:])[0].float(),
                "network": network,
            }
            identity = torch.eye(matrix.shape[0], dtype=torch.float64, device=matrix.device)
            # the images as they lie are compared as they lie, on the pre-aligned pair's voxels: through the pre-aligned
            # copy, a pre-alignment turned 8 degrees the wrong way scored better than no registration 6 degrees off
            # (the features turn with it)
            matrices = [matrix] if torch.equal(matrix, identity) else [matrix, identity]
            prealigned, *rest = self.pair_similarity(d, list(fields.values()), matrices)
            unturned = rest[0] if rest else prealigned
            pairs = {"none": unturned, "prealignment": prealigned, "network": prealigned}
            scores = {stage: pairs[stage].score(field) for stage, field in fields.items()}
            start = min(reversed(list(scores)), key=scores.get)  # the best so far, the later stage on a tie
            pair = pairs[start]
            working_spacing = float(affine_to_spacing(d[self.working_grid_key].affine).min())
            if self.refine_args["iterations"]:
                levels = [max(1, round(s / working_spacing)) for s in self.control_spacing]
                learning_rate = self.step / working_spacing
                fields["refinement"] = refine_ddf(pair, fields[start], levels=levels, learning_rate=learning_rate, **self.refine_args)
                scores["refinement"] = pair.score(fields["refinement"])
            name = pair_output_name(
                str(d[self.moving_key].meta.get("filename_or_obj", "moving")), str(d[self.fixed_key].meta.get("filename_or_obj", "fixed"))
            )
            kept = keep_best_stage(name, scores, "dissimilarity")
            d[key], covered = fields[kept], None
            # with no refinement, the network's field as it is; the pre-alignment and no registration are affine already
            if self.beyond_moving_blend and self.refine_args["iterations"] and kept not in ("none", "prealignment"):
                blend, ridge = max(1, round(self.beyond_moving_blend / working_spacing)), (5.0 / working_spacing) ** 2
                d[key], covered = affine_beyond_moving(pair, fields[kept], identity if start == "none" else matrix, blend, ridge)
                if covered < 1.0:
                    logger.info(f"{name}: the moving image covers {covered:.1%} of the head compared; beyond it the field is affine.")
            d[self.quality_key] = {
                "dissimilarity": {stage: round(score, 6) for stage, score in scores.items()},
                "measure": f"{self.similarity} squared difference + {self.mutual_information_weight} x negative mutual information, "
                f"on {self.spacing:g} mm",
                "refined_from": start if "refinement" in scores else None,
                "kept": kept,
                "moving_covers": None if covered is None else round(covered, 4),
            }
        return d


class InvertDisplacementd(MapTransform):
    """The inverse of the voxel DDF at ``keys`` into ``inverse_key``, both on the working grid (:func:`regplugins.layers.invert_ddf`).

    An inverse-consistent bundle (FIRE) predicts both fields; once the pre-alignment is folded
    into the forward one and the refinement has changed it, the network's inverse no longer
    undoes it. ``iterations`` fixed-point steps from the network's inverse (the value at
    ``inverse_key``, when there is one) make it the forward field's exact counterpart again;
    0 keeps the network's inverse as it is.
    """

    def __init__(self, keys: KeysCollection = "pred", inverse_key: str = "inverse_pred", iterations: int = 20, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.inverse_key, self.iterations = inverse_key, int(iterations)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not self.iterations:
                continue
            ddf = convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)[None]
            initial = d.get(self.inverse_key)
            initial = None if initial is None else convert_to_tensor(initial, dtype=torch.float32, track_meta=False)[None].to(ddf.device)
            d[self.inverse_key] = invert_ddf(ddf, self.iterations, initial)[0]
        return d
