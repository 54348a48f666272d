"""The saving transform that writes a bundle's contract outputs on the fixed image's native grid."""

from __future__ import annotations

import json
import shutil
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from regplugins.io import load_nifti, pair_output_name, save_itk_displacement_field, save_nifti
from regplugins.layers import physical_sample_points, resample_ddf, sample
from regplugins.rigid.parameters import write_rigid_files


def _to_native_grid(ddf: torch.Tensor, working_affine: torch.Tensor, image_path: str) -> np.ndarray:
    """Physical field on the native grid of ``image_path`` of a voxel DDF ``(N, *working)``."""
    image = nib.load(image_path)
    field = resample_ddf(
        ddf[None].float().cpu(), torch.as_tensor(working_affine).double().cpu(),
        torch.as_tensor(image.affine, dtype=torch.float64), image.shape[: ddf.shape[0]],
    )
    return field[0].numpy()


def register_on_native_grids(
    ddf: torch.Tensor,
    working_affine: torch.Tensor,
    fixed_path: str,
    moving_path: str,
    moving_label_path: str | None = None,
    inverse_ddf: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Map a voxel DDF ``(N, *working)`` predicted on the working grid back to the native images.

    Returns what :func:`warp_native_images` returns for that field taken to the fixed grid, and
    with ``inverse_ddf`` (the moving-to-fixed field, predicted on the same working grid, where
    the moving image was resampled) also ``inverse_ddf`` on the moving image's native grid and
    ``moving_affine``.
    """
    outputs = warp_native_images(_to_native_grid(ddf, working_affine, fixed_path), fixed_path, moving_path, moving_label_path)
    if inverse_ddf is not None:
        outputs["inverse_ddf"] = _to_native_grid(inverse_ddf, working_affine, moving_path)
        outputs["moving_affine"] = nib.load(moving_path).affine
    return outputs


def warp_native_images(
    field: np.ndarray, fixed_path: str, moving_path: str, moving_label_path: str | None = None
) -> dict[str, np.ndarray]:
    """Resample the native moving image (linear) and labels (nearest) through a physical field on the fixed grid.

    ``field`` is ``(N, *fixed shape)`` in RAS mm. Returns ``ddf`` (the field), ``warped``, ``warped_label``
    when labels are given, and ``fixed_affine``. Sampling the native moving image, not a working
    copy, keeps its full resolution in ``warped``.
    """
    spatial_dims = field.shape[0]
    fixed_affine = nib.load(fixed_path).affine
    outputs = {"ddf": field, "fixed_affine": fixed_affine}
    sources = {"warped": (moving_path, "bilinear")}
    if moving_label_path:
        sources["warped_label"] = (moving_label_path, "nearest")
    field_t, fixed_affine_t = torch.as_tensor(field)[None], torch.as_tensor(fixed_affine)
    points = {}  # voxel coordinates per source grid: the labels usually share the image's
    for name, (path, mode) in sources.items():
        data, affine = load_nifti(path, spatial_dims)
        grid = (data.shape, affine.tobytes())
        if grid not in points:
            points[grid] = physical_sample_points(field_t, fixed_affine_t, torch.as_tensor(affine)).float()
        outputs[name] = sample(torch.from_numpy(data)[None, None], points[grid], mode=mode)[0, 0].numpy()
    return outputs


def write_registration_outputs(folder: str | Path, outputs: dict[str, np.ndarray], rigid: dict | None = None, quality: dict | None = None) -> Path:
    """Write the contract files of one pair into ``folder``, which appears complete or not at all.

    ``rigid`` (``matrix_lps``, ``center_mm`` and details for the JSON) adds the rigid bundle's
    ``rigid.tfm`` and ``rigid.json`` (:func:`regplugins.rigid.write_rigid_files`); an
    ``inverse_ddf`` in ``outputs`` is written as ``inverse_ddf.nii.gz`` on the moving grid;
    ``quality`` (the stages' similarity, :class:`regplugins.transforms.RefineDisplacementd`) as ``quality.json``.

    Files go to a hidden sibling folder that is renamed at the end, so an interrupted run
    leaves no partial output under the name users look for.
    """
    folder = Path(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    affine = outputs["fixed_affine"]
    save_nifti(partial / "warped.nii.gz", outputs["warped"], affine)
    if "warped_label" in outputs:
        save_nifti(partial / "warped_label.nii.gz", np.rint(outputs["warped_label"]), affine, dtype=np.int32)
    save_itk_displacement_field(partial / "ddf.nii.gz", outputs["ddf"], affine)
    if "inverse_ddf" in outputs:
        save_itk_displacement_field(partial / "inverse_ddf.nii.gz", outputs["inverse_ddf"], outputs["moving_affine"])
    if rigid is not None:
        write_rigid_files(partial, **rigid)
    if quality is not None:
        (partial / "quality.json").write_text(json.dumps(quality, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


class SaveRegistrationd(MapTransform):
    """Write ``warped.nii.gz``, ``warped_label.nii.gz`` and ``ddf.nii.gz`` into ``<output_dir>/<moving>_to_<fixed>/``.

    ``ddf_key`` holds the voxel DDF on the working grid, ``working_grid_key`` an image on that
    grid (its MetaTensor affine), ``fixed_key``/``moving_key`` the loaded images (their
    ``filename_or_obj`` points to the native files) and ``label_key`` the path of the moving
    labels, if any. ``inverse_ddf_key``, when given, holds the inverse voxel DDF on the working
    grid, written as ``inverse_ddf.nii.gz`` on the moving grid; ``quality_key``, when the data holds
    it, the record of :class:`regplugins.transforms.RefineDisplacementd` (``quality.json``). See
    :func:`write_registration_outputs` for how the folder is written.
    """

    def __init__(
        self,
        output_dir: str,
        ddf_key: str = "pred",
        working_grid_key: str = "fixed",
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        label_key: str = "moving_label",
        inverse_ddf_key: str | None = None,
        quality_key: str = "quality",
    ):
        super().__init__(keys=[ddf_key])
        self.quality_key = quality_key
        self.output_dir = Path(output_dir)
        self.ddf_key, self.working_grid_key, self.inverse_ddf_key = ddf_key, working_grid_key, inverse_ddf_key
        self.fixed_key, self.moving_key, self.label_key = fixed_key, moving_key, label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        fixed_path = d[self.fixed_key].meta["filename_or_obj"]
        moving_path = d[self.moving_key].meta["filename_or_obj"]
        label_path = d.get(self.label_key) or None
        inverse = torch.as_tensor(d[self.inverse_ddf_key]) if self.inverse_ddf_key else None
        outputs = register_on_native_grids(
            torch.as_tensor(d[self.ddf_key]), d[self.working_grid_key].affine, fixed_path, moving_path, label_path, inverse
        )
        folder = write_registration_outputs(self.output_dir / pair_output_name(moving_path, fixed_path), outputs, quality=d.get(self.quality_key))
        d["output_folder"] = str(folder)
        return d
