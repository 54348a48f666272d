"""Spatial dictionary transforms MONAI lacks: anti-aliasing before resampling to the working grid, warping by a
predicted voxel DDF, and the affine pre-alignment."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from regplugins.alignment import fit_affine, warp_affine
from regplugins.layers import apply_affine, cached_warp, gaussian_smooth, resample_ddf, voxel_grid, warp_physical


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


class AffineAlignd(MapTransform):
    """Pre-align ``keys`` (the moving image, on the fixed image's grid) to ``fixed_key`` by :func:`fit_affine`.

    The global stage that ANTs runs before SyN and that the papers' networks assume was done:
    the moving image is replaced by its affinely aligned copy and the voxel matrix is stored at
    ``matrix_key``, for :class:`ComposeAffined` to fold into the network's field. ``transform``
    ``"none"`` stores the identity and leaves the image as it is.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fixed_key: str = "fixed",
        matrix_key: str = "prealign_matrix",
        transform: str = "affine",
        allow_missing_keys: bool = False,
        **fit_args,
    ):
        super().__init__(keys, allow_missing_keys)
        if transform not in ("none", "rigid", "affine"):
            raise ValueError(f'transform must be "none", "rigid" or "affine", got {transform!r}.')
        self.fixed_key, self.matrix_key, self.transform, self.fit_args = fixed_key, matrix_key, transform, fit_args

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        fixed = d[self.fixed_key]
        spatial_dims = fixed.dim() - 1
        matrix = torch.eye(spatial_dims + 1, dtype=torch.float64)
        for key in self.key_iterator(d):
            if self.transform != "none":
                matrix = fit_affine(fixed[0], d[key][0], transform=self.transform, **self.fit_args)
                aligned = warp_affine(convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)[None], matrix)[0]
                d[key] = MetaTensor(aligned, meta=d[key].meta) if isinstance(d[key], MetaTensor) else aligned
            d[self.matrix_key] = matrix
        return d


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
