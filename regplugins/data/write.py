"""Synthetic pairs as NIfTI files with a ``datalist.json``: the held-out sets of tests and benchmarks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from regplugins.io import RAS_TO_LPS, save_itk_displacement_field, save_nifti

from .synth import CSF_RIM, FIRST_STRUCTURE_LABEL, SCALP, SKULL, SyntheticPairGenerator


def write_synthetic_set(
    out: str | Path,
    n: int = 4,
    shape: Sequence[int] = (96, 96, 96),
    modalities: Sequence[str] | str = ("ct", "t1"),
    seed: int = 0,
    spacing: float = 2.0,
    moving_grid: str = "random",
    **generator_args,
) -> Path:
    """Write ``n`` pairs (seeds ``seed`` ... ``seed + n - 1``) and return the path of ``datalist.json``.

    Each entry holds the contract's ``fixed``, ``moving`` and ``moving_label``, plus
    ``fixed_label``, ``true_ddf`` (an ITK displacement field like a bundle's ``ddf.nii.gz``),
    for rigid-only sets ``true_rigid`` (JSON with the ``"matrix"`` of a contract ``rigid.json``),
    the paired images (``fixed_paired``: the fixed anatomy in the moving modality,
    ``moving_paired``: the moving anatomy in the fixed modality) and both modality names.
    Paths are relative to the datalist's folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = SyntheticPairGenerator(shape=shape, spacing=spacing, modalities=modalities, moving_grid=moving_grid, **generator_args)
    entries = []
    for index in range(int(n)):
        pair = generator(int(seed) + index)
        moving_mod, fixed_mod = pair["moving_modality"], pair["fixed_modality"]
        names = {
            "fixed": f"{index:03d}_fixed_{fixed_mod}.nii.gz",
            "moving": f"{index:03d}_moving_{moving_mod}.nii.gz",
            "fixed_label": f"{index:03d}_fixed_label.nii.gz",
            "moving_label": f"{index:03d}_moving_label.nii.gz",
            "fixed_paired": f"{index:03d}_fixed_{moving_mod}.nii.gz",
            "moving_paired": f"{index:03d}_moving_{fixed_mod}.nii.gz",
        }
        for key, name in names.items():
            volume = pair[key]
            dtype = np.int16 if key.endswith("label") else np.float32
            save_nifti(out / name, volume[0].numpy(), volume.affine.numpy(), dtype=dtype)
        names["true_ddf"] = f"{index:03d}_true_ddf.nii.gz"
        save_itk_displacement_field(out / names["true_ddf"], pair["true_ddf"].numpy(), pair["true_ddf"].affine.numpy())
        if generator.deformation_mm == 0 and not generator.scaling:
            names["true_rigid"] = f"{index:03d}_true_rigid.json"
            flip = np.diag([*np.diag(RAS_TO_LPS), 1.0])
            matrix = flip @ pair["true_affine"].numpy() @ flip
            (out / names["true_rigid"]).write_text(json.dumps({"matrix": matrix.tolist()}))
        entries.append({**names, "fixed_modality": fixed_mod, "moving_modality": moving_mod})
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps(entries, indent=2))
    return datalist


# what scanners write for a head: a 512 x 512 x 300 CT at sub-millimetre spacing against a
# 256 x 256 x 176 T1 at 1 mm, the size that reliability and memory are measured at
CLINICAL_MR_SHAPE, CLINICAL_CT_SHAPE = (256, 256, 176), (512, 512, 300)


def write_clinical_pair(
    out: str | Path, seed: int = 0, mr_shape: Sequence[int] = CLINICAL_MR_SHAPE, ct_shape: Sequence[int] = CLINICAL_CT_SHAPE
) -> Path:
    """One CT-like/T1-like pair on clinical grids (by default :data:`CLINICAL_CT_SHAPE` against :data:`CLINICAL_MR_SHAPE`); its datalist.

    The pair is generated on the MR grid (1 mm, the CT moved by the generator's random motion
    and deformation) and the CT and its labels are then resampled onto the finer CT grid over
    the same field of view, stored as int16 as CT scanners store Hounsfield units. The CT is the
    fixed image, the heavier direction: every output, the field among them, lies on its grid.
    """
    import torch
    import torch.nn.functional as F

    out = Path(out)
    datalist = write_synthetic_set(out, n=1, shape=mr_shape, modalities=("ct", "t1"), seed=seed, spacing=1.0, moving_grid="same")
    entry = json.loads(datalist.read_text())[0]
    for key, mode in (("moving", "trilinear"), ("moving_label", "nearest-exact")):
        image = nib.load(str(out / entry[key]))
        volume = torch.from_numpy(np.asanyarray(image.dataobj, dtype=np.float32))[None, None]
        volume = F.interpolate(volume, size=tuple(ct_shape), mode=mode, **({"align_corners": False} if mode == "trilinear" else {}))
        # target voxel i sits at source voxel (i + 1/2) * scale - 1/2 (voxel edges kept, as interpolate keeps them)
        scale = np.array(mr_shape) / np.array(ct_shape)
        to_source = np.eye(4)
        to_source[:3, :3], to_source[:3, 3] = np.diag(scale), scale / 2 - 0.5
        save_nifti(out / entry[key], np.rint(volume[0, 0].numpy()), image.affine @ to_source, dtype=np.int16)
    swapped = {
        "fixed": entry["moving"],
        "moving": entry["fixed"],
        "fixed_label": entry["moving_label"],
        "moving_label": entry["fixed_label"],
        "fixed_modality": "ct",
        "moving_modality": "t1",
    }
    datalist.write_text(json.dumps([swapped], indent=2))
    return datalist


def head_label_names(labels: np.ndarray) -> dict[str, int]:
    """Names of the generated head's labels present in ``labels``, as MONAI Label's ``label_names`` (name: value)."""
    fixed = {SCALP: "scalp", SKULL: "skull", CSF_RIM: "csf_rim"}
    values = sorted(int(v) for v in np.unique(labels) if v > 0)
    return {fixed.get(v, f"structure_{v - FIRST_STRUCTURE_LABEL + 1}"): v for v in values}


def _atlas_files(folder: Path, modality: str) -> dict[str, Path]:
    return {"image": folder / f"atlas_{modality}.nii.gz", "label": folder / "atlas_label.nii.gz", "label_names": folder / "label_names.json"}


def write_atlas(out: str | Path, modality: str = "t1", shape: Sequence[int] = (96, 96, 96), spacing: float = 2.0, seed: int = 0) -> dict:
    """One synthetic head (image, labels and ``label_names.json``) to register onto other images as an atlas.

    Returns what :func:`load_atlas` returns.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head = SyntheticPairGenerator(shape=shape, spacing=spacing, modalities=(modality, modality), skull_probability=1.0)(int(seed))
    labels = head["fixed_label"][0].numpy()
    files = _atlas_files(out, modality)
    save_nifti(files["image"], head["fixed"][0].numpy(), head["fixed"].affine.numpy())
    save_nifti(files["label"], labels, head["fixed_label"].affine.numpy(), dtype=np.int16)
    files["label_names"].write_text(json.dumps(head_label_names(labels), indent=2))
    return load_atlas(out, modality)


def load_atlas(folder: str | Path, modality: str = "t1") -> dict | None:
    """The atlas :func:`write_atlas` wrote into ``folder``, or None when there is none.

    Paths under ``image``, ``label`` and ``label_names``, and the names themselves (name: value)
    under ``names``.
    """
    files = _atlas_files(Path(folder), modality)
    if not all(path.exists() for path in files.values()):
        return None
    return {**{key: str(path) for key, path in files.items()}, "names": json.loads(files["label_names"].read_text())}
