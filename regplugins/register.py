"""One command to register and one to apply, as ANTs, uniGradICON and SynthMorph users expect.

``regplugins register`` runs a bundle's own inference config in this process, pair by pair: the
network is built and loaded once, every pair is checked before its work, a failing pair is
reported and the others go on, and ``summary.json`` records each. ``regplugins apply``
resamples an image through a saved ``ddf.nii.gz`` or ``rigid.tfm`` exactly as the bundles wrote
``warped.nii.gz`` (ITK's rule). Inputs may be any image ITK reads; they reach the bundles as
NIfTI copies named like the originals, so the outputs keep the contract's names.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from regplugins.io import (
    RegistrationError,
    RegistrationInputError,
    as_given,
    as_nifti,
    check_distinct_outputs,
    checked_output_dir,
    load_itk_displacement_field,
    nifti_pairs,
    pair_output_name,
    registration_pairs,
    save_nifti,
)

__all__ = ["DEFAULT_BUNDLES", "default_bundle", "register_pairs", "apply_transform"]

# the bundle a pair gets without --bundle: the best of docs/benchmarks.md for its kind
DEFAULT_BUNDLES = {"ct_mr": "ct_mr_gradient_fusion_reg", "mr_mr": "fcn_multires_selfsup_reg", "rigid": "head_ct_mr_rigid_reg"}


def default_bundle(fixed: str, moving: str, rigid: bool = False) -> str:
    """The bundle for a pair: the rigid head bundle on request, else by whether either image is a CT, told as the bundles tell it."""
    if rigid:
        return DEFAULT_BUNDLES["rigid"]
    import torch

    from regplugins.io import load_nifti
    from regplugins.transforms import looks_like_ct

    has_ct = any(looks_like_ct(torch.from_numpy(load_nifti(path)[0])) for path in (fixed, moving))
    return DEFAULT_BUNDLES["ct_mr" if has_ct else "mr_mr"]


@contextmanager
def _quiet_library_chatter():
    """Silence MONAI's notices that mean nothing to a user of the command (no logging file, no nvImageCodec, deprecations).

    The bundles' own warnings (``quality.json``'s stage discarded, an untrained network) stay.
    """
    loggers = [logging.getLogger(name) for name in ("monai.bundle.workflows", "monai.data.nvimgcodec_pydicom_plugin")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def register_pairs(
    fixed: str = "",
    moving: str = "",
    out: str = "registered",
    bundle: str | None = None,
    rigid: bool = False,
    moving_label: str = "",
    datalist: str = "",
    device: str | None = None,
    skip_existing: bool = False,
    **settings,
) -> dict:
    """Register one pair or a datalist's pairs with ``bundle`` (default: :func:`default_bundle` of the first pair) into ``out``.

    ``settings`` override the bundle's inference config (``refine_iterations=0``,
    ``prealign="rigid"``, ``ckpt_path="none"``, ...). Prints one line per pair; returns the
    summary also written to ``out/summary.json``: the bundle, and per pair its status (``done``,
    ``skipped`` with ``skip_existing`` when its outputs exist, ``failed`` with the one-line
    error), output folder and seconds. An unknown bundle or a bad setting stops the run before any pair.
    """
    from regplugins.bundles import BundleRunner
    from regplugins.outputs import has_registration_outputs
    from regplugins.utils import as_flag

    try:
        rigid, skip_existing = as_flag(rigid, "--rigid"), as_flag(skip_existing, "--skip_existing")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    checked_output_dir(out)
    out_dir = Path(out)
    with tempfile.TemporaryDirectory(prefix="regplugins-inputs-") as scratch, _quiet_library_chatter():
        try:
            given = registration_pairs(fixed, moving, moving_label, datalist)
            check_distinct_outputs(given, datalist)
            pairs = nifti_pairs(given, Path(scratch))
            bundle = bundle or default_bundle(pairs[0]["fixed"], pairs[0]["moving"], rigid)
            runner = BundleRunner(bundle, output_dir=str(out_dir), **({"device": device} if device else {}), **settings)
        except ValueError as error:  # RegistrationInputError among them
            raise SystemExit(f"error: {error}") from None
        records = []
        for index, (pair, original) in enumerate(zip(pairs, given), start=1):
            name = pair_output_name(pair["moving"], pair["fixed"])
            record = {"fixed": original["fixed"], "moving": original["moving"], "output": str(out_dir / name)}
            start = time.perf_counter()
            try:
                if skip_existing and has_registration_outputs(out_dir / name):
                    record["status"] = "skipped"
                else:
                    runner.run(pair)
                    record["status"] = "done"
            except (ValueError, RuntimeError, OSError) as error:  # RegistrationInputError among them
                message = str(error) if isinstance(error, (RegistrationInputError, RegistrationError)) else f"{pair['moving']}: {error}"
                record.update(status="failed", error=as_given(message))  # the user's files, not their NIfTI copies
            record["seconds"] = round(time.perf_counter() - start, 2)
            records.append(record)
            line = f"[{index}/{len(pairs)}] {name}: "
            print(
                line
                + (
                    f"error: {record['error']}"
                    if record["status"] == "failed"
                    else f"{record['status']} in {record['seconds']} s, {record['output']}"
                ),
                flush=True,
            )
    summary = {
        "bundle": Path(bundle).name,
        "bundle_root": str(runner.root),
        "done": sum(r["status"] == "done" for r in records),
        "skipped": sum(r["status"] == "skipped" for r in records),
        "failed": sum(r["status"] == "failed" for r in records),
        "pairs": records,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _covers(field_shape, field_affine: np.ndarray, shape, affine: np.ndarray) -> bool:
    """Whether every voxel centre of the grid ``affine``, ``shape`` lies inside the field's grid, as ITK's transform decides it."""
    corners = np.array(np.meshgrid(*[[0, size - 1] for size in shape], indexing="ij")).reshape(len(shape), -1)
    index = (np.linalg.inv(field_affine) @ affine @ np.vstack([corners, np.ones(corners.shape[1])]))[: len(shape)]
    return bool(((index >= -0.5 - 1e-6) & (index < np.array(field_shape)[:, None] - 0.5)).all())


def apply_transform(transform: str, moving: str, reference: str, out: str, nearest: bool = False) -> str:
    """Resample ``moving`` onto the grid of ``reference`` through ``transform`` (a ``ddf.nii.gz`` or ``rigid.tfm``) into ``out``.

    The same sampling as the bundles' ``warped.nii.gz``, hence as ITK's resampler with the same
    transform: linear, or nearest neighbour (``nearest``, for labels, written as integers).
    """
    from regplugins.outputs import field_on_grid, warp_native_volumes
    from regplugins.rigid.parameters import read_rigid_tfm, rigid_field

    with tempfile.TemporaryDirectory(prefix="regplugins-inputs-") as scratch:
        try:
            moving_path, reference_path = as_nifti(moving, Path(scratch)), as_nifti(reference, Path(scratch))
            for path in (moving_path, reference_path, transform):
                if not Path(path).is_file():
                    raise RegistrationInputError(f"{path}: file not found.")
            grid = nib.load(reference_path)
            shape, affine = grid.shape[:3], grid.affine
            if str(transform).endswith(".tfm"):
                field = rigid_field(read_rigid_tfm(transform), affine, shape)
            else:
                field, field_affine = load_itk_displacement_field(transform)
                if field.shape[1:] != tuple(shape) or not np.allclose(field_affine, affine, atol=1e-3):  # a coarser ddf_spacing file
                    if not _covers(field.shape[1:], field_affine, shape, affine):
                        raise RegistrationInputError(
                            f"{transform}: the field's grid does not cover {reference}; give the fixed image it was made for."
                        )
                    field = field_on_grid(field, field_affine, affine, shape)
        except ValueError as error:  # RegistrationInputError, or a transform file that is not ours
            raise SystemExit(f"error: {error}") from None
        warped = warp_native_volumes(field, reference_path, {"out": (moving_path, "nearest" if nearest else "bilinear")})["out"]
        if nearest:
            save_nifti(out, np.rint(warped), affine, dtype=np.int32)
        else:
            save_nifti(out, warped, affine)
    return str(out)
