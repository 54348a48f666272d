"""The paper's data augmentation as files: ``n`` rigidly moved copies of every pair, in its original's subset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from regplugins.io import load_nifti, registration_pairs, save_nifti

from .parameters import grid_center_lps, random_rigid_parameters, ras_to_lps, rigid_matrix

__all__ = ["write_augmented_set"]


def _moved(path: str, motion_ras: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The image at ``path`` moved by ``motion_ras`` (world to world) on its own grid: sampled at the inverse motion."""
    from regplugins.alignment import warp_affine

    data, affine = load_nifti(path)
    voxel_matrix = torch.from_numpy(np.linalg.inv(affine) @ np.linalg.inv(motion_ras) @ affine)
    return warp_affine(torch.from_numpy(data)[None, None], voxel_matrix, mode=mode)[0, 0].numpy(), affine


def write_augmented_set(
    datalist: str, out: str, n: int = 99, test_fraction: float = 0.4, max_rotation_deg: float = 15.0, max_translation_mm: float = 5.0, seed: int = 0
) -> Path:
    """Write ``n`` augmented pairs per pair of ``datalist`` and ``out/datalist.json`` with ``training`` and ``testing``.

    Each original (``fixed``, ``moving``, optional ``moving_label`` and ``true_rigid``; without
    ``true_rigid`` the pair is taken as already aligned) first goes to the training or the test
    subset (``test_fraction`` of them, at least one when there are two or more), and all its
    copies follow it, as the paper keeps them, so no test anatomy is seen in training. A copy's
    moving image (and labels) is the original moved by a rotation of up to ``max_rotation_deg``
    about a random axis and a translation of up to ``max_translation_mm`` per axis, about the
    centre of its own grid; its ``true_rigid`` (a contract ``rigid.json`` ``matrix``) is that
    motion composed with the original's.
    """
    originals = registration_pairs(datalist=datalist)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_test = int(round(test_fraction * len(originals)))
    if len(originals) > 1:
        num_test = min(max(num_test, 1), len(originals) - 1)
    test = set(rng.permutation(len(originals))[:num_test].tolist())
    subsets: dict[str, list] = {"training": [], "testing": []}
    for index, pair in enumerate(originals):
        truth = np.eye(4)
        if pair.get("true_rigid"):
            truth = np.asarray(json.loads(Path(pair["true_rigid"]).read_text())["matrix"], dtype=np.float64)
        moving, moving_affine = load_nifti(pair["moving"])
        moving_center = grid_center_lps(moving_affine, moving.shape)
        for copy in range(int(n)):
            angles, translation = random_rigid_parameters(rng, max_rotation_deg, max_translation_mm)
            motion = rigid_matrix(angles, translation, moving_center)
            stem = f"{index:03d}_{copy:03d}"
            entry = {"fixed": os.path.relpath(pair["fixed"], out), "original": index}
            for key, mode in (("moving", "bilinear"), ("moving_label", "nearest")):
                if pair.get(key):
                    data, affine = _moved(pair[key], ras_to_lps(motion), mode)
                    entry[key] = f"{stem}_{key}.nii.gz"
                    save_nifti(out / entry[key], data, affine, dtype=np.int16 if key == "moving_label" else np.float32)
            entry["true_rigid"] = f"{stem}_true_rigid.json"
            (out / entry["true_rigid"]).write_text(json.dumps({"matrix": (motion @ truth).tolist()}))
            subsets["testing" if index in test else "training"].append(entry)
    path = out / "datalist.json"
    path.write_text(json.dumps(subsets, indent=2))
    return path
