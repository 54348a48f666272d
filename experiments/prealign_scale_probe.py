"""Probe: how well a bundle's pre-alignment alone scales the head, against the true field's affine.

For each pair of a bench datalist (with ``true_ddf``), the bundle's pre-processing runs once per
set of config overrides; the pre-alignment's field is taken to the fixed grid and scored as
`regplugins bench` scores a field (mean label Dice, field error inside the head), and the affine
that best fits it over the head is compared with the one that best fits the true field: the cube
root of the determinant of the one's linear part against the other's, above 1 where the
pre-alignment leaves the warped head too small. Found the T1-onto-CT pre-alignment up to 3 % small
in volume at 3 mm, fixed by ``prealign_finish`` (docs/benchmarks.md, "Thick slices and part of the
head").

    python experiments/prealign_scale_probe.py fcn_multires_selfsup_reg DATALIST '{}' '{"prealign_finish": true}'
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from refinement_probe import network_fields, score_outputs

from regplugins.io import load_itk_displacement_field, load_nifti, registration_pairs
from regplugins.transforms import ComposeAffined
from regplugins.transforms.io import register_on_native_grids


def head_affine(field: np.ndarray, points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 3x4 affine that best fits, by least squares, ``x -> x + field(x)`` at the head's world ``points``."""
    moved = points + field[:, mask]
    return moved @ np.linalg.pinv(np.vstack([points, np.ones(points.shape[1])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("datalist")
    parser.add_argument("overrides", nargs="+", help="JSON config overrides of the bundle, one row each")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pairs = registration_pairs(datalist=args.datalist)
    print("| overrides | Dice | field error mm | volume scale per pair | Dice per pair |")
    print("| --- | --- | --- | --- | --- |")
    for overrides in args.overrides:
        rows = []
        for data, pair in zip(network_fields(args.bundle, args.datalist, json.loads(overrides)), pairs):
            zero = {"pred": torch.zeros_like(data["pred"]), "prealign_matrix": data["prealign_matrix"]}
            field = ComposeAffined("pred")(zero)["pred"]
            out = register_on_native_grids(field, data["fixed"].affine, pair["fixed"], pair["moving"], pair["moving_label"])
            dice, error, _ = score_outputs(out, pair)
            mask = load_nifti(pair["fixed_label"])[0] > 0
            points = out["fixed_affine"][:3, :3] @ np.stack(np.nonzero(mask)) + out["fixed_affine"][:3, 3:4]
            true = head_affine(load_itk_displacement_field(pair["true_ddf"])[0], points, mask)
            found = head_affine(out["ddf"], points, mask)
            rows.append((dice, error, float(np.linalg.det(found[:, :3] @ np.linalg.inv(true[:, :3])) ** (1 / 3))))
        a = np.array(rows)
        print(f"| `{overrides}` | {a[:, 0].mean():.4f} | {a[:, 1].mean():.3f} | {np.round(a[:, 2], 4).tolist()} | {np.round(a[:, 0], 3).tolist()} |")


if __name__ == "__main__":
    main()
