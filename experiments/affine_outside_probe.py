"""Would an affine field outside the moving image's domain help? A probe on a bench run's outputs, nothing in the bundles.

Where a moving MR shows part of the head, the bundles' fields beyond what it shows are their
networks' and refinements' extrapolations. This replaces a bundle's field there by the affine
fitted (least squares) to the field over the head voxels whose moving point lands inside the
moving image (2 voxels clear of its edges), blended in over 10 mm, and reports the field error
against the true field inside the fixed head: all of it, where the true moving point lies inside
the moving image (covered), and the rest. Needs scipy (its Euclidean distance transform).

    python experiments/affine_outside_probe.py bench_clinical/bench_thick_moving_t1 bench_clinical/thick_moving_t1 \
        fcn_multires_selfsup_reg ct_mr_dual_similarity_reg fire_inverse_consistent_reg

Results: docs/experiments/refinement.md, "A moving image that covers part of the head". Built into
the bundles since regplugins 0.9.0 (`regplugins.refinement.affine_beyond_moving`, "The field beyond
the moving image's data" there); on a bench run of 0.9.0 the "bundle" rows give its split.
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt

from regplugins.io import load_itk_displacement_field, pair_output_name

bench, data = Path(sys.argv[1]), Path(sys.argv[2])
pairs = json.loads((data / "datalist.json").read_text())
for m in sys.argv[3:]:
    res = []
    for pair in pairs:
        fixed = nib.load(data / pair["fixed"])
        shape = fixed.shape[:3]
        head = np.asanyarray(nib.load(data / pair["fixed_label"]).dataobj) > 0
        true, _ = load_itk_displacement_field(data / pair["true_ddf"])
        moving = nib.load(data / pair["moving"])
        field, _ = load_itk_displacement_field(bench / m / pair_output_name(pair["moving"], pair["fixed"]) / "ddf.nii.gz")
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).reshape(3, -1).astype(float)
        world = fixed.affine[:3, :3] @ ijk + fixed.affine[:3, 3:]

        def inside_of(f):
            v = np.linalg.inv(moving.affine)[:3, :3] @ (world + f.reshape(3, -1)) + np.linalg.inv(moving.affine)[:3, 3:]
            return ((v >= 1.5) & (v < np.array(moving.shape[:3])[:, None] - 2.5)).all(0).reshape(shape)

        dom = inside_of(field)  # where the bundle's field lands inside the moving image
        fit = (head & dom).reshape(-1)
        X = np.vstack([world[:, fit], np.ones(fit.sum())]).T
        A, *_ = np.linalg.lstsq(X, (world + field.reshape(3, -1))[:, fit].T, rcond=None)
        affine_field = (np.vstack([world, np.ones(world.shape[1])]).T @ A).T - world
        distance = distance_transform_edt(~dom, sampling=np.abs(np.diag(fixed.affine)[:3]))  # mm outside the domain
        w = np.clip(distance / 10.0, 0, 1).reshape(-1)  # blend over 10 mm
        blended = ((1 - w) * field.reshape(3, -1) + w * affine_field).reshape(field.shape)
        truth_in = inside_of(true)
        for name, f in (("bundle", field), ("blended", blended)):
            e = np.linalg.norm(f - true, axis=0)
            res.append((name, e[head].mean(), e[head & truth_in].mean(), e[head & ~truth_in].mean()))
    for name in ("bundle", "blended"):
        r = np.array([x[1:] for x in res if x[0] == name])
        print(f"{m:30s} {name:8s} all {r[:, 0].mean():.2f} covered {r[:, 1].mean():.2f} not covered {r[:, 2].mean():.2f}")
