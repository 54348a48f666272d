"""Does a mutual-information fit started from turns of 90 degrees find heads that the one start misses?

For each pair of a bench datalist (rigid pairs with ``true_rigid``), the rigid bundle's working
grids (its inference preprocessing, the given order), then ``fit_affine`` (rigid, at 10 mm, as
``RefineRigidd.prealignment``) from each of ``QUARTER_TURNS`` (the identity and 90 degrees
either way about each axis, about the fixed head's centre). Each start's result: negative mutual information on the native
images (as the quality check measures it) and its error against the truth; then the pre-alignment's (the fit at 10 and
5 mm from the best start), its error and time. Record:
docs/experiments/head_ct_mr_rigid_reg.md, "A start from the pre-alignment".

    python experiments/rigid_multistart_probe.py BENCH/rigid_mni152_turned/data_rigid_mni152_turned_12x128x128x128 0 1 6
"""

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

from regplugins.alignment import QUARTER_TURNS, fit_affine, mutual_information
from regplugins.layers import ImageDomain
from regplugins.metrics import rigid_errors
from regplugins.rigid import grid_center_lps
from regplugins.transforms import RefineRigidd
from regplugins.transforms.spatial import native_image, voxel_to_lps

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "head_ct_mr_rigid_reg"


def main(folder: str, pairs: list[int]) -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", "auto_order": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    for index in pairs:
        moving_role = "moving_ct" if Path(f"{folder}/{index:03d}_moving_ct.nii.gz").exists() else "moving_t2"
        fixed_path, moving_path = (f"{folder}/{index:03d}_{role}.nii.gz" for role in ("fixed_t1", moving_role))
        data = preprocessing({"fixed": fixed_path, "moving": moving_path})
        fixed, moving = data["fixed"], data["moving"]
        truth = np.asarray(json.loads(Path(f"{folder}/{index:03d}_true_rigid.json").read_text())["matrix"])
        native_fixed, native_moving = native_image(fixed_path), native_image(moving_path)
        header = nib.load(fixed_path)
        center = grid_center_lps(header.affine, header.shape)
        grid = voxel_to_lps(fixed.affine)
        domain = ImageDomain.between(grid, native_moving.affine, native_moving.image.shape)
        for rotation in QUARTER_TURNS:
            name = "identity" if not rotation.any() else f"{'xyz'[int(rotation.abs().argmax())]}{'+' if rotation.sum() > 0 else '-'}90"
            voxel = fit_affine(fixed[0], moving[0], transform="rigid", levels=(2,), iterations=(60,), moving_domain=domain, rotation=rotation)
            world = grid @ voxel.numpy() @ np.linalg.inv(grid)
            errors = rigid_errors(world, truth, center)
            print(
                f"pair {index} start {name}: -MI {mutual_information(native_fixed, native_moving, world):.4f}, "
                f"{errors['rotation_error_deg']:.2f} degrees, {errors['translation_error_mm']:.2f} mm",
                flush=True,
            )
        began = time.perf_counter()
        kept = RefineRigidd.prealignment(fixed, moving, native_fixed, native_moving)
        seconds = time.perf_counter() - began
        errors = rigid_errors(kept, truth, center)
        print(
            f"pair {index} prealignment: {errors['rotation_error_deg']:.2f} degrees, {errors['translation_error_mm']:.2f} mm, {seconds:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], [int(index) for index in sys.argv[2:]])
