"""Is a CT/T1 head's rotation error the finish's settings or its grid? (docs/experiments/head_ct_mr_rigid_reg.md)

For pairs of a 144^3 `rigid_mni152` bench folder that holds a `head_ct_mr_rigid_reg:refine=false`
run, finishes the network's estimate with `regplugins.rigid.refinement.refine_rigid` at 2 mm and at
1.5 mm, with the bundle's settings and variants (other seeds, more samples, a third level, more
iterations), and prints each result's errors and Mattes MI beside the true motion's.

    python experiments/rigid_finish_grid_probe.py bench_rigid/rigid_mni152 3
"""

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from regplugins.metrics import rigid_errors
from regplugins.rigid.parameters import grid_center_lps
from regplugins.rigid.refinement import mattes_value, refine_rigid, resampled

BENCH = Path(sys.argv[1])
DATA = next(BENCH.glob("data_rigid_mni152_*"))
VARIANTS = [
    {},
    {"seed": 2},
    {"seed": 3},
    {"sampling_percentage": 0.1},
    {"sampling_percentage": 0.2},
    {"shrink_factors": (2, 1, 1), "smoothing_sigmas": (1.0, 0.0, 0.0)},
    {"iterations": 200},
]
for i in [int(a) for a in sys.argv[2:]]:
    name = f"{i:03d}_moving_ct_to_{i:03d}_fixed_t1"
    fixed_path, moving_path = DATA / f"{i:03d}_fixed_t1.nii.gz", DATA / f"{i:03d}_moving_ct.nii.gz"
    native = nib.load(fixed_path)
    center = grid_center_lps(native.affine, native.shape[:3])
    true = np.array(json.loads((DATA / f"{i:03d}_true_rigid.json").read_text())["matrix"])
    start = np.array(json.loads((BENCH / "head_ct_mr_rigid_reg:refine=false" / name / "rigid.json").read_text())["matrix"])
    for spacing in (2.0, 1.5):
        fixed, moving = resampled(fixed_path, spacing), resampled(moving_path, spacing)
        print(i, spacing, "mm: true motion's Mattes MI", round(mattes_value(fixed, moving, true, center), 5))
        for variant in VARIANTS:
            started = time.perf_counter()
            found = refine_rigid(fixed, moving, start, center, **variant)
            e = rigid_errors(found, true, center)
            print(
                i,
                spacing,
                variant,
                f"{e['rotation_error_deg']:.3f} deg {e['translation_error_mm']:.3f} mm",
                f"MI {mattes_value(fixed, moving, found, center):.5f} {time.perf_counter() - started:.2f} s",
                flush=True,
            )
