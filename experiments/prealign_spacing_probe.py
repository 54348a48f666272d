"""How far off is the pre-alignment alone, fitted at the levels of one grid or another? A probe, nothing in the bundles.

Runs the dual-similarity bundle's preprocessing up to `AffineAlignd` (load, normalise, anti-alias,
resample to the working grid, fit the affine) on every pair of a bench datalist with a true field,
once per working spacing given, and reports the mean distance in mm, inside the fixed head,
between where the pre-alignment and the true field send each fixed voxel. `spacing` is
`AffineAlignd`'s: the finest level of the fit where the working grid is finer (1 fits at the
working grid's own levels, 4, 2 and 1 times its voxel).

    python experiments/prealign_spacing_probe.py bench_clinical/thick_moving_t1/datalist.json 2,1 3,1 2,3
    # WORKING_SPACING,SPACING per column: 2 mm grid at its own levels, the 3 mm grid, the 2 mm grid at 3 mm levels

Results: docs/experiments/refinement.md, "The pre-alignment's levels in millimetres".
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import Compose

from regplugins.io import load_itk_displacement_field, load_nifti

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ct_mr_dual_similarity_reg"


def preprocessing_to_prealignment(datalist: Path, working_spacing: float, spacing: float) -> tuple[Compose, list]:
    """The bundle's preprocessing up to and including its pre-alignment, and its pairs."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "datalist": str(datalist), "output_dir": "/tmp/prealign_probe"})
    parser["working_spacing"] = [working_spacing] * 3
    transforms = parser.get_parsed_content("preprocessing").transforms
    last = [type(t).__name__ for t in transforms].index("AffineAlignd")
    transforms[last].spacing = spacing
    return Compose(transforms[: last + 1]), parser.get_parsed_content("pairs")


def prealignment_error(data: dict, entry: dict, folder: Path) -> float:
    """Mean distance (mm) inside the fixed head between the pre-alignment's and the true moving points."""
    grid = np.asarray(data["fixed"].affine, dtype=np.float64)
    world = grid @ data["prealign_matrix"].numpy() @ np.linalg.inv(grid)  # RAS mm, fixed point to moving point
    true, affine = load_itk_displacement_field(folder / entry["true_ddf"])
    head = load_nifti(str(folder / entry["fixed_label"]))[0] > 0
    voxels = np.stack(np.meshgrid(*[np.arange(s) for s in true.shape[1:]], indexing="ij")).reshape(3, -1)
    points = affine[:3, :3] @ voxels + affine[:3, 3:]
    field = (world[:3, :3] @ points + world[:3, 3:] - points).reshape(true.shape)
    return float(np.linalg.norm(field - true, axis=0)[head].mean())


def main(datalist: str, *settings: str) -> None:
    datalist = Path(datalist)
    entries = json.loads(datalist.read_text())
    for setting in settings:
        working_spacing, spacing = (float(v) for v in setting.split(","))
        front, pairs = preprocessing_to_prealignment(datalist, working_spacing, spacing)
        errors, seconds = [], []
        for pair, entry in zip(pairs, entries):
            start = time.perf_counter()
            data = front(dict(pair))
            seconds.append(time.perf_counter() - start)
            errors.append(prealignment_error(data, entry, datalist.parent))
        print(
            f"working grid {working_spacing:g} mm, levels from {max(spacing, working_spacing):g} mm: "
            f"error {' '.join(f'{e:.2f}' for e in errors)} mean {np.mean(errors):.2f} mm; "
            f"{np.mean(seconds):.2f} s a pair (preprocessing to the pre-alignment)"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
