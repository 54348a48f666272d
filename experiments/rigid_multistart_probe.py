"""Does a mutual-information fit started from turns of 90 degrees find heads that the one start misses?

For each pair of a bench datalist (rigid pairs with ``true_rigid``), the rigid bundle's working
grids (its inference preprocessing, the given order), then ``fit_affine`` (rigid, levels of 10 and
5 mm, as ``RefineRigidd.prealignment``) from the identity and from 90 degrees either way about each
axis (about the fixed head's centre). Each start's result: negative mutual information on the native
images (as the quality check measures it) and its error against the truth. Record:
docs/experiments/head_ct_mr_rigid_reg.md, "A start from the pre-alignment".

    python experiments/rigid_multistart_probe.py BENCH/rigid_mni152_turned/data_rigid_mni152_turned_12x128x128x128 0 1 6
"""

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from regplugins.alignment import affine_about, fit_affine, foreground_center, mutual_information, warp_affine
from regplugins.metrics import rigid_errors
from regplugins.rigid import grid_center_lps
from regplugins.transforms.spatial import native_image, voxel_to_lps

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "head_ct_mr_rigid_reg"


def starts() -> dict[str, torch.Tensor]:
    """Axis-angle vectors of the identity and of a quarter turn either way about each axis."""
    vectors = {"identity": torch.zeros(3, dtype=torch.float64)}
    for axis in range(3):
        for sign in (1, -1):
            vector = torch.zeros(3, dtype=torch.float64)
            vector[axis] = sign * math.pi / 2
            vectors[f"{'xyz'[axis]}{'+' if sign > 0 else '-'}90"] = vector
    return vectors


def main(folder: str, pairs: list[int]) -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", "auto_order": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    for index in pairs:
        fixed_path, moving_path = (f"{folder}/{index:03d}_{role}.nii.gz" for role in ("fixed_t1", "moving_ct"))
        data = preprocessing({"fixed": fixed_path, "moving": moving_path})
        fixed, moving = data["fixed"], data["moving"]
        truth = np.asarray(json.loads(Path(f"{folder}/{index:03d}_true_rigid.json").read_text())["matrix"])
        native_fixed, native_moving = native_image(fixed_path), native_image(moving_path)
        header = nib.load(fixed_path)
        center = grid_center_lps(header.affine, header.shape)
        grid, head = voxel_to_lps(fixed.affine), foreground_center(fixed[0]).double()
        for name, vector in starts().items():
            start = affine_about(vector, torch.zeros(3, dtype=torch.float64), head)
            turned = warp_affine(torch.as_tensor(moving, dtype=torch.float32)[None], start)[0]
            voxel = start @ fit_affine(fixed[0], turned[0], transform="rigid", levels=(2, 1), iterations=(60, 30))
            world = grid @ voxel.numpy() @ np.linalg.inv(grid)
            errors = rigid_errors(world, truth, center)
            print(
                f"pair {index} start {name}: -MI {mutual_information(native_fixed, native_moving, world):.4f}, "
                f"{errors['rotation_error_deg']:.2f} degrees, {errors['translation_error_mm']:.2f} mm",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], [int(index) for index in sys.argv[2:]])
