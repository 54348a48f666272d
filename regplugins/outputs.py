"""The contract's outputs of one pair: the native moving image and labels warped through a field on the fixed
grid (ITK's sampling rule), and the pair folder written whole, from one run, next to a user's own files.

Below both the saving transforms (:mod:`regplugins.transforms`) and the scoring (:mod:`regplugins.metrics`,
:mod:`regplugins.bench`), which warp the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regplugins.io import load_nifti, save_itk_displacement_field, save_nifti
from regplugins.layers import physical_sample_points, resample_ddf, sample_like_itk, slab_affine, slabs
from regplugins.rigid.parameters import write_rigid_files

__all__ = ["CONTRACT_FILES", "register_on_native_grids", "warp_native_images", "warp_native_volumes", "write_registration_outputs"]


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
    copy, keeps its full resolution in ``warped``; see :func:`warp_native_volumes`.
    """
    sources = {"warped": (moving_path, "bilinear")}
    if moving_label_path:
        sources["warped_label"] = (moving_label_path, "nearest")
    return {"ddf": field, "fixed_affine": nib.load(fixed_path).affine, **warp_native_volumes(field, fixed_path, sources)}


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
