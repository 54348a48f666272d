"""Make a held-out bench set look like a clinical MR: thick slices and a field of view that stops short of the head.

The bench's MR images are nearly isotropic and hold the whole head; a clinical T1 or T2 is
often slices 5 mm thick that cover the brain and little below it, registered to a CT of the
whole head. This takes a bench set (``regplugins bench`` writes them as
``OUT/<kind>/data_<kind>_<n>x<shape>/``) and writes a copy in which one side of every pair,
``--image fixed`` (the image, its labels, its paired rendering and the true field) or
``--image moving`` (the image, its labels and its paired rendering), is on such a grid: the
spacing of the first two axes kept, ``--slice_mm`` along the third (the image blurred over
the slice's thickness first), only the slices from ``--keep_from`` of the head's extent along
that axis on. The other side stays as it is. Then bench it:

    python experiments/clinical_grid_probe.py bench_out/mni152_ct_t1/data_mni152_ct_t1_4x128x128x128 clinical_ct_t1
    regplugins bench --data clinical_ct_t1/datalist.json --bundles ... --baselines none,ants_affine,ants_syn_tuned

Results: docs/experiments/refinement.md, "Thick slices and a partial field of view".
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch

from regplugins.io import load_itk_displacement_field, save_itk_displacement_field, save_nifti
from regplugins.layers import apply_affine, gaussian_smooth, sample, voxel_grid


def clinical_grid(affine: np.ndarray, label: np.ndarray, slice_mm: float, keep_from: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """The affine and shape of the thick-slice grid over the last part of the head along the third axis of a grid."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    rows = np.nonzero(label.reshape(-1, label.shape[2]).any(0))[0]  # slices with head in them
    bottom, top = rows.min() + keep_from * (rows.max() - rows.min()), min(rows.max() + 3, label.shape[2] - 1)
    step = slice_mm / spacing[2]  # old voxels per new slice
    new = affine.copy()
    new[:3, 2] *= step
    new[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, bottom]) + affine[:3, 3]
    return new, (label.shape[0], label.shape[1], int(math.floor((top - bottom) / step)) + 1)


def on_grid(volume: np.ndarray, affine: np.ndarray, new_affine: np.ndarray, shape, mode: str, blur_voxels: float = 0.0) -> np.ndarray:
    """``volume`` ``(C, X, Y, Z)`` sampled at the voxels of the new grid; blurred along Z by ``blur_voxels`` first."""
    data = torch.as_tensor(volume, dtype=torch.float32)[None]
    if blur_voxels:
        data = gaussian_smooth(data[0], [0.0, 0.0, blur_voxels])[None]
    points = apply_affine(torch.as_tensor(np.linalg.inv(affine) @ new_affine), voxel_grid(shape, dtype=torch.float64)).float()
    return sample(data, points[None], mode=mode, padding_mode="border")[0].numpy()


def make_clinical_set(source: str, out: str, image: str = "fixed", slice_mm: float = 5.0, keep_from: float = 0.35) -> str:
    """Write the copy of the bench set in ``source`` with ``image`` on a clinical grid to ``out``; returns its datalist."""
    if image not in ("fixed", "moving"):
        raise SystemExit(f"error: --image is fixed or moving, got {image!r}")
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = json.loads((source / "datalist.json").read_text())
    other = "moving" if image == "fixed" else "fixed"
    for pair in pairs:
        for key in (other, f"{other}_label", f"{other}_paired", *(() if image == "fixed" else ("true_ddf",))):
            if pair.get(key):
                shutil.copy(source / pair[key], out / pair[key])
        label_image = nib.load(source / pair[f"{image}_label"])
        label = np.asanyarray(label_image.dataobj)
        new_affine, shape = clinical_grid(label_image.affine, label, slice_mm, keep_from)
        # a slice's profile: a Gaussian of the slice thickness' FWHM, less the voxel's own
        old_mm = float(np.linalg.norm(label_image.affine[:3, 2]))
        blur = math.sqrt(max(slice_mm**2 - old_mm**2, 0.0)) / 2.355 / old_mm
        for key, mode in ((image, "bilinear"), (f"{image}_paired", "bilinear"), (f"{image}_label", "nearest")):
            if pair.get(key):
                volume = nib.load(source / pair[key])
                data = np.asanyarray(volume.dataobj, dtype=np.float32)[None]
                resampled = on_grid(data, volume.affine, new_affine, shape, mode, blur if mode == "bilinear" else 0.0)[0]
                save_nifti(out / pair[key], resampled, new_affine, dtype=np.int16 if key.endswith("label") else np.float32)
        if image == "fixed":
            field, field_affine = load_itk_displacement_field(source / pair["true_ddf"])
            save_itk_displacement_field(out / pair["true_ddf"], on_grid(field, field_affine, new_affine, shape, "bilinear"), new_affine)
    (out / "datalist.json").write_text(json.dumps(pairs, indent=2))
    return str(out / "datalist.json")


if __name__ == "__main__":
    fire.Fire(make_clinical_set)
