"""The contract's outputs of one pair: the native moving image and labels warped through a field on the fixed
grid (ITK's sampling rule), and the pair folder written whole, from one run, next to a user's own files.

Below both the saving transforms (:mod:`regplugins.transforms`) and the scoring (:mod:`regplugins.metrics`,
:mod:`regplugins.bench`), which warp the same way.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regplugins.io import load_nifti, pair_output_name, save_itk_displacement_field, save_nifti
from regplugins.layers import apply_affine, physical_sample_points, resample_ddf, sample, sample_like_itk, slab_affine, slabs, voxel_grid
from regplugins.rigid.parameters import write_rigid_files
from regplugins.utils import as_flag

__all__ = [
    "CONTRACT_FILES",
    "coarser_field",
    "field_on_grid",
    "has_registration_outputs",
    "pending_pairs",
    "register_on_native_grids",
    "warp_native_images",
    "warp_native_volumes",
    "write_registration_outputs",
]


def _to_native_grid(ddf: torch.Tensor, working_affine: torch.Tensor, image_path: str) -> np.ndarray:
    """Physical field on the native grid of ``image_path`` of a voxel DDF ``(N, *working)``."""
    image = nib.load(image_path)
    field = resample_ddf(
        ddf[None].float().cpu(),
        torch.as_tensor(working_affine).double().cpu(),
        torch.as_tensor(image.affine, dtype=torch.float64),
        image.shape[: ddf.shape[0]],
    )
    return field[0].numpy()


def register_on_native_grids(
    ddf: torch.Tensor,
    working_affine: torch.Tensor,
    fixed_path: str,
    moving_path: str,
    moving_label_path: str | None = None,
    inverse_ddf: torch.Tensor | None = None,
    ddf_spacing: float = 0.0,
) -> dict[str, np.ndarray]:
    """Map a voxel DDF ``(N, *working)`` predicted on the working grid back to the native images.

    Returns what :func:`warp_native_images` returns for that field taken to the fixed grid (and
    ``ddf_spacing``), and with ``inverse_ddf`` (the moving-to-fixed field, predicted on the same
    working grid, where the moving image was resampled) also ``inverse_ddf`` on the moving image's
    native grid and ``moving_affine``.
    """
    field = _to_native_grid(ddf, working_affine, fixed_path)
    outputs = warp_native_images(field, fixed_path, moving_path, moving_label_path, ddf_spacing)
    if inverse_ddf is not None:
        outputs["inverse_ddf"] = _to_native_grid(inverse_ddf, working_affine, moving_path)
        outputs["moving_affine"] = nib.load(moving_path).affine
    return outputs


def warp_native_images(
    field: np.ndarray, fixed_path: str, moving_path: str, moving_label_path: str | None = None, ddf_spacing: float = 0.0
) -> dict[str, np.ndarray]:
    """Resample the native moving image (linear) and labels (nearest) through a physical field on the fixed grid.

    ``field`` is ``(N, *fixed shape)`` in RAS mm. Returns ``ddf`` (the field), ``warped``, ``warped_label``
    when labels are given, and ``fixed_affine``. Sampling the native moving image, not a working
    copy, keeps its full resolution in ``warped``; see :func:`warp_native_volumes`.

    ``ddf_spacing`` (mm, 0 for the fixed grid) asks for ``ddf.nii.gz`` on a coarser grid, a fraction
    of the size at clinical resolution (:func:`coarser_field`): ``ddf_file`` holds it and its
    affine, ``ddf`` becomes the field ITK reads from it, which the images then follow, and
    ``ddf_file_error_mm`` what that costs against the registration's own field (mean and max).
    """
    fixed_affine = nib.load(fixed_path).affine
    outputs = {"fixed_affine": fixed_affine}
    if ddf_spacing:
        coarse, coarse_affine, read = coarser_field(field, fixed_affine, ddf_spacing)
        error = np.linalg.norm(read - field, axis=0)
        outputs["ddf_file"] = (coarse, coarse_affine)
        outputs["ddf_file_error_mm"] = {"ddf_spacing": float(ddf_spacing), "mean": float(error.mean()), "max": float(error.max())}
        field = read
    sources = {"warped": (moving_path, "bilinear")}
    if moving_label_path:
        sources["warped_label"] = (moving_label_path, "nearest")
    return {"ddf": field, **outputs, **warp_native_volumes(field, fixed_path, sources)}


def warp_native_volumes(field: np.ndarray, fixed_path: str, sources: dict[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """Each of ``sources`` (name: its file and ``"bilinear"`` or ``"nearest"``) on the fixed grid, through a physical field there.

    At the edge of a source the rule is ITK's (:func:`~regplugins.layers.sample_like_itk`), so ITK
    resampling with the field written as ``ddf.nii.gz`` gives the same volumes.
    """
    spatial_dims = field.shape[0]
    volumes = {name: load_nifti(path, spatial_dims) for name, (path, _) in sources.items()}
    outputs = {name: np.empty(field.shape[1:], dtype=np.float32) for name in sources}
    fixed_affine = torch.as_tensor(nib.load(fixed_path).affine)
    # slab by slab of the fixed grid: a clinical grid's points in double precision would take gigabytes
    for start, stop in slabs(field.shape[1:]):
        field_slab = torch.as_tensor(field[:, start:stop])[None]
        points = {}  # voxel coordinates per source grid: the labels usually share the image's
        for name, (_, mode) in sources.items():
            data, affine = volumes[name]
            grid = (data.shape, affine.tobytes())
            if grid not in points:
                # kept in double precision: whether a point lies inside the image is decided as ITK decides it
                points[grid] = physical_sample_points(field_slab, slab_affine(fixed_affine, start), torch.as_tensor(affine))
            outputs[name][start:stop] = sample_like_itk(torch.from_numpy(data)[None, None], points[grid], mode=mode)[0, 0].numpy()
    return outputs


def coarser_field(field: np.ndarray, fixed_affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A physical field ``(N, *fixed)`` on a grid of ``spacing`` mm over the fixed grid, and the field ITK reads back from it.

    The coarse grid keeps the fixed grid's axes and first voxel and reaches past its last voxel,
    so that ITK, which takes no displacement outside a field's grid, interpolates it everywhere on
    the fixed grid; axes already coarser than ``spacing`` keep their voxels. Returns the coarse
    field, its affine, and :func:`field_on_grid` of it on the fixed grid.
    """
    n = field.shape[0]
    affine = torch.as_tensor(np.asarray(fixed_affine), dtype=torch.float64)
    factors = (spacing / affine[:n, :n].norm(dim=0)).clamp(min=1.0)  # fixed voxels per coarse voxel, per axis
    shape = [math.ceil((size - 1) / factor - 1e-9) + 1 for size, factor in zip(field.shape[1:], factors.tolist())]
    coarse_affine = affine.clone()
    coarse_affine[:n, :n] *= factors
    full = torch.as_tensor(field)[None]
    points = voxel_grid(shape, dtype=torch.float64) * factors.view(n, *([1] * n))
    coarse = sample(full, points[None].to(full.dtype), padding_mode="border")[0].numpy()
    return coarse, coarse_affine.numpy(), field_on_grid(coarse, coarse_affine.numpy(), fixed_affine, field.shape[1:])


def field_on_grid(field: np.ndarray, field_affine: np.ndarray, affine: np.ndarray, shape) -> np.ndarray:
    """A physical field ``(N, *S)`` on the grid of ``field_affine`` at each voxel of the grid ``affine``, ``shape``, as ITK reads it.

    ITK's displacement field transform interpolates linearly, with the edge voxels repeated, and
    moves a point outside the field's grid not at all (:func:`~regplugins.layers.sample_like_itk`).
    """
    to_field = torch.linalg.inv(torch.as_tensor(np.asarray(field_affine), dtype=torch.float64)) @ torch.as_tensor(
        np.asarray(affine), dtype=torch.float64
    )
    source = torch.as_tensor(field)[None]
    read = np.empty((field.shape[0], *shape), dtype=np.float32)
    for start, stop in slabs(shape):
        points = apply_affine(slab_affine(to_field, start), voxel_grid((stop - start, *shape[1:]), dtype=torch.float64))
        read[:, start:stop] = sample_like_itk(source, points[None])[0].numpy()
    return read


def has_registration_outputs(folder: str | Path) -> bool:
    """Whether a pair folder holds a finished registration: ``warped.nii.gz`` and its transform (``ddf.nii.gz`` or ``rigid.tfm``).

    A pair folder appears whole (:func:`write_registration_outputs`), so these files mean a run finished there.
    """
    folder = Path(folder)
    return (folder / "warped.nii.gz").exists() and ((folder / "ddf.nii.gz").exists() or (folder / "rigid.tfm").exists())


def pending_pairs(pairs: list[dict], output_dir: str, skip_existing: bool = False) -> list[dict]:
    """The pairs still to register into ``output_dir``: all of them, or with ``skip_existing`` those without finished outputs.

    ``skip_existing`` resumes a stopped cohort run (``monai.bundle run --skip_existing true``, one
    process or many); when every pair is done, the run says so and ends here with exit status 0.
    """
    if not as_flag(skip_existing, "skip_existing"):
        return pairs
    pending = [pair for pair in pairs if not has_registration_outputs(Path(output_dir) / pair_output_name(pair["moving"], pair["fixed"]))]
    print(f"skip_existing: {len(pairs) - len(pending)} of {len(pairs)} pairs already have their outputs in {output_dir}.", flush=True)
    if not pending:
        raise SystemExit(0)
    return pending


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
    ``inverse_ddf`` in ``outputs`` is written as ``inverse_ddf.nii.gz`` on the moving grid, a
    ``ddf_file`` (field and affine, :func:`warp_native_images`) as ``ddf.nii.gz`` instead of ``ddf``;
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
        save_itk_displacement_field(staged / "ddf.nii.gz", *outputs.get("ddf_file", (outputs["ddf"], affine)))
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
