"""Which starts let the rigid pre-alignment find a head turned further than 60 degrees per axis?

Three sets of starts, each screened by ``fit_affine`` (rigid, 60 steps at 10 mm, or 30 at 20 mm for
the cube) and scored by mutual information on the native images, then fitted at 10 and 5 mm from the
best, as ``RefineRigidd.prealignment``: ``quarter`` (``QUARTER_TURNS``, what 0.10.0 shipped),
``quarter+axes`` (also ``principal_axes_turns``, the four proper rotations that map the fixed head's
principal axes onto the moving head's, what 0.11.0 ships) and ``cube@20`` (the 24 turns of a cube). Cases: ``far``, pairs 0 and 1 of a rigid
bench folder, their moving header turned about the fixed grid's centre by 180 degrees about each
axis, by (90, 90, 0) and by (150, 40, -70); or every pair of a bench folder as it is. Prints each
set's rotation error and time; or, with ``starts``, each start of ``quarter+axes`` after the screening
fit: its turn from the headers, its error and its mutual information, and by how much the best fit in
a wrong pose (10 degrees or more off) trails the best in the right one. ``tests`` is the tests' pair 0
(conftest's generated set, no truth). Record: docs/experiments/head_ct_mr_rigid_reg.md, first sections.

    python experiments/rigid_far_turn_probe.py far BENCH/rigid_mni152/data_rigid_mni152_12x128x128x128
    python experiments/rigid_far_turn_probe.py pairs BENCH/rigid_mni152_turned/data_rigid_mni152_turned_12x128x128x128
    python experiments/rigid_far_turn_probe.py pairs BENCH/rigid_mni152_turned/data_rigid_mni152_turned_12x128x128x128 starts
    python experiments/rigid_far_turn_probe.py tests - starts
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from regplugins.alignment import QUARTER_TURNS, fit_affine, mutual_information, principal_axes_turns, rotation_vector
from regplugins.data import write_synthetic_set
from regplugins.layers import ImageDomain
from regplugins.metrics import rigid_errors
from regplugins.rigid import grid_center_lps, ras_to_lps, rigid_matrix
from regplugins.transforms.spatial import native_image, voxel_to_lps

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "head_ct_mr_rigid_reg"
FAR_TURNS_DEG = ([180, 0, 0], [0, 180, 0], [0, 0, 180], [90, 90, 0], [150, 40, -70])


def axis_angle(axis, degrees: float) -> torch.Tensor:
    axis = torch.tensor(axis, dtype=torch.float64)
    return axis / axis.norm() * math.radians(degrees)


def cube_turns() -> tuple[torch.Tensor, ...]:
    """The 24 rotations of a cube: the identity, 90, -90 and 180 about each axis, 120 either way about each
    body diagonal, 180 about each face diagonal."""
    turns = [torch.zeros(3, dtype=torch.float64)]
    turns += [axis_angle(axis, angle) for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1]) for angle in (90, -90, 180)]
    turns += [axis_angle(axis, angle) for axis in ([1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]) for angle in (120, -120)]
    turns += [axis_angle(axis, 180) for axis in ([1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1])]
    return tuple(turns)


def compare(preprocessing, fixed_path: str, moving_path: str, truth: np.ndarray, center: np.ndarray, label: str, report: str = "sets") -> None:
    data = preprocessing({"fixed": fixed_path, "moving": moving_path})
    fixed, moving = data["fixed"][0], data["moving"][0]
    native_fixed, native_moving = native_image(fixed_path), native_image(moving_path)
    grid = voxel_to_lps(data["fixed"].affine)
    domain = ImageDomain.between(grid, native_moving.affine, native_moving.image.shape)

    def fit(rotation, levels, iterations):
        voxel = fit_affine(fixed, moving, "rigid", levels, iterations, moving_domain=domain, rotation=rotation)
        return grid @ voxel.numpy() @ np.linalg.inv(grid)

    if report == "starts":
        screen_starts(fixed, moving, native_fixed, native_moving, fit, truth, center, label)
        return
    sets = {
        "quarter": (QUARTER_TURNS, (2,), (60,)),
        "quarter+axes": (QUARTER_TURNS + principal_axes_turns(fixed.as_tensor(), moving.as_tensor()), (2,), (60,)),
        "cube@20": (cube_turns(), (4,), (30,)),
    }
    results = []
    for name, (starts, levels, iterations) in sets.items():
        began = time.perf_counter()
        best = min(starts, key=lambda rotation: mutual_information(native_fixed, native_moving, fit(rotation, levels, iterations)))
        error = rigid_errors(fit(best, (2, 1), (60, 30)), truth, center)["rotation_error_deg"]
        results.append(f"{name} {error:.2f} degrees {time.perf_counter() - began:.2f} s")
    print(label, " | ".join(results), flush=True)


def screen_starts(fixed, moving, native_fixed, native_moving, fit, truth, center, label: str) -> None:
    """Each start's screening fit: turn from the headers / error (degrees) / mutual information, and the wrong poses' lag."""
    rows = []
    for rotation in QUARTER_TURNS + principal_axes_turns(fixed.as_tensor(), moving.as_tensor()):
        matrix = fit(rotation, (2,), (60,))
        turn = math.degrees(float(rotation_vector(torch.as_tensor(matrix[:3, :3])).norm()))
        error = rigid_errors(matrix, truth, center)["rotation_error_deg"] if truth is not None else math.nan
        rows.append((turn, error, mutual_information(native_fixed, native_moving, matrix)))
    lag = ""
    if truth is not None:
        right, wrong = (min(mi for _, error, mi in rows if (error < 10) == keep) for keep in (True, False))
        lag = f" | a wrong pose trails by {wrong - right:.3f}"
    print(label, " ".join(f"{turn:.0f}/{error:.0f}/{mi:.3f}" for turn, error, mi in rows) + lag, flush=True)


def main(mode: str, folder: str, report: str = "sets") -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", "auto_order": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    if mode == "tests":
        with tempfile.TemporaryDirectory() as scratch:
            write_synthetic_set(Path(scratch), n=2, shape=(64, 64, 64), modalities=("ct", "t1"), seed=11)  # as tests/conftest.py
            compare(preprocessing, f"{scratch}/000_fixed_t1.nii.gz", f"{scratch}/000_moving_ct.nii.gz", None, None, "tests pair 000", report)
        return
    pairs = sorted(Path(folder).glob("*_true_rigid.json"))
    for truth_path in pairs[:2] if mode == "far" else pairs:
        stem = truth_path.name[:3]
        fixed_path = f"{folder}/{stem}_fixed_t1.nii.gz"
        moving_path = f"{folder}/{stem}_moving_ct.nii.gz"  # the bench's rigid datalists: CT or T2 onto T1
        if not Path(moving_path).exists():
            moving_path = f"{folder}/{stem}_moving_t2.nii.gz"
        header = nib.load(fixed_path)
        center = grid_center_lps(header.affine, header.shape)
        truth = np.asarray(json.loads(truth_path.read_text())["matrix"])
        if mode != "far":
            compare(preprocessing, fixed_path, moving_path, truth, center, f"pair {stem}", report)
            continue
        moving = nib.load(moving_path)
        with tempfile.TemporaryDirectory() as scratch:
            for angles in FAR_TURNS_DEG:
                turn = rigid_matrix(angles, [0.0, 0.0, 0.0], center)  # LPS, about the fixed grid's centre
                turned_path = f"{scratch}/turned.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(moving.dataobj), ras_to_lps(turn) @ moving.affine), turned_path)
                compare(preprocessing, fixed_path, turned_path, turn @ truth, center, f"pair {stem} turned {angles}", report)


if __name__ == "__main__":
    main(*sys.argv[1:])
