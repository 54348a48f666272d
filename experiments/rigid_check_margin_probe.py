"""Does the rigid bundle's quality check rank the refinement and the pre-alignment, or only its sample?

For each pair of a rigid bench folder, the rigid bundle's working grids (its inference
preprocessing, the given order), ``RefineRigidd.prealignment`` and the finish from it (the
refinement when the pre-alignment is the best start, as on every generated pair), each one's
error against the truth, and the check's negative mutual information of the pre-alignment and of
the true transform minus the refinement's, over 20 samples (seeds) of the check: the sample's
noise, and whether the measure prefers the transform nearer the truth. Record:
docs/experiments/head_ct_mr_rigid_reg.md, first section.

    python experiments/rigid_check_margin_probe.py BENCH/data_rigid_4x128x128x128 0 1 2 3
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

from regplugins.alignment import finish_affine, mutual_information
from regplugins.metrics import rigid_errors
from regplugins.rigid import grid_center_lps
from regplugins.transforms import RefineRigidd
from regplugins.transforms.spatial import native_image

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "head_ct_mr_rigid_reg"
SEEDS = range(20)


def main(folder: str, pairs: list[int]) -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", "auto_order": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    for index in pairs:
        moving_role = "moving_ct" if Path(f"{folder}/{index:03d}_moving_ct.nii.gz").exists() else "moving_t2"
        fixed_path, moving_path = (f"{folder}/{index:03d}_{role}.nii.gz" for role in ("fixed_t1", moving_role))
        data = preprocessing({"fixed": fixed_path, "moving": moving_path})
        native_fixed, native_moving = native_image(fixed_path), native_image(moving_path)
        truth = np.asarray(json.loads(Path(f"{folder}/{index:03d}_true_rigid.json").read_text())["matrix"])
        header = nib.load(fixed_path)
        center = grid_center_lps(header.affine, header.shape)
        prealignment = RefineRigidd.prealignment(data["fixed"], data["moving"], native_fixed, native_moving)
        refinement = finish_affine(native_fixed, native_moving, prealignment, native_fixed.center_mm)

        def gap(matrix: np.ndarray) -> np.ndarray:
            """Its negative mutual information minus the refinement's, on each of the check's samples."""
            return np.array(
                [
                    mutual_information(native_fixed, native_moving, matrix, seed=seed)
                    - mutual_information(native_fixed, native_moving, refinement, seed=seed)
                    for seed in SEEDS
                ]
            )

        report = [f"pair {index}"]
        for name, matrix in (("prealignment", prealignment), ("refinement", refinement)):
            errors = rigid_errors(matrix, truth, center)
            report.append(f"{name} {errors['rotation_error_deg']:.3f} degrees {errors['translation_error_mm']:.3f} mm")
        for name, matrix in (("prealignment", prealignment), ("truth", truth)):
            values = gap(matrix)
            spread = f"{values.mean():+.5f} +- {values.std():.5f} [{values.min():+.5f}, {values.max():+.5f}]"
            report.append(f"{name} - refinement {values[0]:+.5f} (seed 0), {spread}")
        print(" | ".join(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(index) for index in sys.argv[2:]])
