"""The saving transform that writes a bundle's contract outputs on the fixed image's native grid."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Hashable, Mapping
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from regplugins.bundles import as_flag
from regplugins.io import load_nifti, pair_output_name, save_itk_displacement_field, save_nifti
from regplugins.layers import physical_sample_points, resample_ddf, sample_like_itk, slab_affine, slabs
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
    copy, keeps its full resolution in ``warped``; at its edge the rule is ITK's
    (:func:`~regplugins.layers.sample_like_itk`), so ITK resampling with ``ddf.nii.gz`` gives ``warped``.
    """
    spatial_dims = field.shape[0]
    fixed_affine = nib.load(fixed_path).affine
    outputs = {"ddf": field, "fixed_affine": fixed_affine}
    sources = {"warped": (moving_path, "bilinear")}
    if moving_label_path:
        sources["warped_label"] = (moving_label_path, "nearest")
    volumes = {name: load_nifti(path, spatial_dims) for name, (path, _) in sources.items()}
    for name in sources:
        outputs[name] = np.empty(field.shape[1:], dtype=np.float32)
    fixed_affine_t = torch.as_tensor(fixed_affine)
    # slab by slab of the fixed grid: a clinical grid's points in double precision would take gigabytes
    for start, stop in slabs(field.shape[1:]):
        field_slab = torch.as_tensor(field[:, start:stop])[None]
        points = {}  # voxel coordinates per source grid: the labels usually share the image's
        for name, (_, mode) in sources.items():
            data, affine = volumes[name]
            grid = (data.shape, affine.tobytes())
            if grid not in points:
                points[grid] = physical_sample_points(field_slab, slab_affine(fixed_affine_t, start), torch.as_tensor(affine)).float()
            outputs[name][start:stop] = sample_like_itk(torch.from_numpy(data)[None, None], points[grid], mode=mode)[0, 0].numpy()
    return outputs


# every file a pair folder may hold under the contract; only these are ever replaced or removed there
CONTRACT_FILES = ("warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz", "inverse_ddf.nii.gz", "rigid.tfm", "rigid.json", "quality.json", "qc.png")


@contextmanager
def _pair_lock(folder: Path):
    """Hold an exclusive lock on a pair's output folder, so that concurrent runs of one pair wait for each other.

    The lock is a hidden file beside the folder, held with ``flock``: the system drops it when
    its process ends, so a killed run leaves no lock behind.
    """
    with open(folder.with_name(f".{folder.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _place(staged: Path, folder: Path) -> None:
    """Move the staged files into ``folder``: one rename for a new folder, else file by file under the pair's lock.

    In an existing folder the contract files of an earlier run that this run does not write
    (``warped_label.nii.gz`` of a run with labels) are removed, any other file is kept.
    """
    with _pair_lock(folder):
        if not folder.exists():
            staged.rename(folder)
            return
        for name in CONTRACT_FILES:
            source, target = staged / name, folder / name
            if source.exists():
                os.replace(source, target)
            elif target.exists():
                target.unlink()
        staged.rmdir()


def write_registration_outputs(
    folder: str | Path, outputs: dict[str, np.ndarray], rigid: dict | None = None, quality: dict | None = None, qc: tuple[str, str] | None = None
) -> Path:
    """Write the contract files of one pair into ``folder``, complete, from this run alone.

    ``rigid`` (``matrix_lps``, ``center_mm`` and details for the JSON) adds the rigid bundle's
    ``rigid.tfm`` and ``rigid.json`` (:func:`regplugins.rigid.write_rigid_files`); an
    ``inverse_ddf`` in ``outputs`` is written as ``inverse_ddf.nii.gz`` on the moving grid;
    ``quality`` (the stages' similarity, :class:`regplugins.transforms.RefineDisplacementd`) as ``quality.json``;
    ``qc``, the fixed and moving image paths, asks for the picture ``qc.png`` (:func:`regplugins.plots.save_registration_qc`).

    Files go to a hidden staging folder of this process beside ``folder`` and are moved in at the
    end (:func:`_place`): an interrupted run leaves no partial output under the name users look
    for, two runs of one pair never share a staging folder, and a user's own files in the pair
    folder stay.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    staged.mkdir()
    try:
        affine = outputs["fixed_affine"]
        save_nifti(staged / "warped.nii.gz", outputs["warped"], affine)
        if "warped_label" in outputs:
            save_nifti(staged / "warped_label.nii.gz", np.rint(outputs["warped_label"]), affine, dtype=np.int32)
        save_itk_displacement_field(staged / "ddf.nii.gz", outputs["ddf"], affine)
        if "inverse_ddf" in outputs:
            save_itk_displacement_field(staged / "inverse_ddf.nii.gz", outputs["inverse_ddf"], outputs["moving_affine"])
        if rigid is not None:
            write_rigid_files(staged, **rigid)
        if quality is not None:
            (staged / "quality.json").write_text(json.dumps(quality, indent=2))
        if qc is not None:
            from regplugins.plots import save_registration_qc

            save_registration_qc(*qc, outputs["warped"], outputs["ddf"], staged / "qc.png")
        _place(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return folder


class SaveRegistrationd(MapTransform):
    """Write ``warped.nii.gz``, ``warped_label.nii.gz`` and ``ddf.nii.gz`` into ``<output_dir>/<moving>_to_<fixed>/``.

    ``ddf_key`` holds the voxel DDF on the working grid, ``working_grid_key`` an image on that
    grid (its MetaTensor affine), ``fixed_key``/``moving_key`` the loaded images (their
    ``filename_or_obj`` points to the native files) and ``label_key`` the path of the moving
    labels, if any. ``inverse_ddf_key``, when given, holds the inverse voxel DDF on the working
    grid, written as ``inverse_ddf.nii.gz`` on the moving grid; ``quality_key``, when the data holds
    it, the record of :class:`regplugins.transforms.RefineDisplacementd` (``quality.json``); ``qc``
    adds the picture ``qc.png``. See :func:`write_registration_outputs` for how the folder is written.
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
        qc: bool = False,
    ):
        super().__init__(keys=[ddf_key])
        self.quality_key, self.qc = quality_key, as_flag(qc, "qc")
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
        folder = write_registration_outputs(self.output_dir / pair_output_name(moving_path, fixed_path), outputs, quality=d.get(self.quality_key),
                                            qc=(fixed_path, moving_path) if self.qc else None)
        d["output_folder"] = str(folder)
        return d
