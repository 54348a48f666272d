"""Settings of the rigid bundle's torch finish (docs/experiments/head_ct_mr_rigid_reg.md)

For the pairs of rigid bench folders (the `data_*` folder of a `regplugins bench` kind), starts
1.5 degrees and 1.5 mm off the true motion about a random axis (about where the network leaves a
pair), finishes with `regplugins.alignment.finish_affine` (rigid) and the keyword arguments given,
and prints each pair's errors, the seconds of the finish with both images read, and the means.

    python experiments/rigid_torch_finish_probe.py bench/rigid_mni152/data_rigid_mni152_8x128x128x128 "{'num_bins': 32}"
"""

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from regplugins.alignment import finish_affine
from regplugins.io import registration_pairs
from regplugins.metrics import rigid_errors
from regplugins.rigid.parameters import grid_center_lps, rigid_matrix
from regplugins.transforms import native_image

folder, variant = Path(sys.argv[1]), dict(eval(sys.argv[2])) if len(sys.argv) > 2 else {}
rng = np.random.default_rng(0)
errors = []
for pair in registration_pairs(datalist=str(folder / "datalist.json")):
    native = nib.load(pair["fixed"])
    center = grid_center_lps(native.affine, native.shape[:3])
    truth = np.asarray(json.loads(Path(pair["true_rigid"]).read_text())["matrix"])
    axis, shift = rng.normal(size=3), rng.normal(size=3)
    start = truth @ rigid_matrix(1.5 * axis / np.linalg.norm(axis), 1.5 * shift / np.linalg.norm(shift), center)
    started = time.perf_counter()
    found = finish_affine(native_image(pair["fixed"]), native_image(pair["moving"]), start, center, **variant)
    error = rigid_errors(found, truth, center)
    errors.append((error["rotation_error_deg"], error["translation_error_mm"], time.perf_counter() - started))
    print(Path(pair["moving"]).name, "{:.3f} deg {:.3f} mm {:.2f} s".format(*errors[-1]), flush=True)
print("MEAN", variant, "{:.3f} deg {:.3f} mm {:.2f} s/pair".format(*np.mean(errors, 0)))
