"""Ground-truth generation of the rigid head paper: PCA symmetry frames, the registration it starts, the files it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from regplugins.data import SyntheticPairGenerator
from regplugins.io import load_nifti, save_nifti
from regplugins.metrics import rigid_errors
from regplugins.rigid import grid_center_lps, ras_to_lps, rigid_matrix, settle_moving_frame, symmetry_frame, write_ground_truth

from conftest import ROOT

FLIP = np.diag([-1.0, -1.0, 1.0])
# the synthetic pair of the registration tests: its head's principal axes come out alike in CT and
# T1 (on other seeds the T1 Otsu threshold can cut into the scalp and bend the T1 cloud's axes)
HEAD_SEED = 4


def _ellipsoid_head(shape, spacing, motion_lps=np.eye(4)) -> tuple[np.ndarray, np.ndarray]:
    """An oblique ellipsoidal "head" with a bright off-centre "brain" on a grid centred on the world origin.

    With ``motion_lps`` the head is moved by it: voxel ``x`` shows the head at ``motion_lps^-1 x``.
    Returns the volume and its RAS affine.
    """
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0
    voxels = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world_lps = (voxels * spacing + affine[:3, 3]) @ FLIP
    pose = rigid_matrix([20.0, -15.0, 30.0], [4.0, -3.0, 2.0], [0.0, 0.0, 0.0])  # the head's own axes, oblique to the grid
    to_head = np.linalg.inv(motion_lps @ pose)
    local = world_lps @ to_head[:3, :3].T + to_head[:3, 3]
    head = ((local / [80.0, 62.0, 50.0]) ** 2).sum(-1) <= 1
    brain = (((local - [10.0, 0.0, 8.0]) / [60.0, 45.0, 35.0]) ** 2).sum(-1) <= 1
    return (100.0 * head + 300.0 * brain).reshape(shape).astype(np.float32), affine


def _rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cosine = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def test_symmetry_frames_of_a_head_and_of_its_rotated_copy_give_back_the_rotation(tmp_path):
    """The frames follow the head: frame(moved head) = motion^-1 frame(head), up to the signs of the axes."""
    motion = rigid_matrix([12.0, -20.0, 8.0], [6.0, -4.0, 3.0], [0.0, 0.0, 0.0])
    paths = []
    for name, pose in (("head", np.eye(4)), ("moved", np.linalg.inv(motion))):
        volume, affine = _ellipsoid_head((64, 64, 64), 3.0, pose)
        save_nifti(tmp_path / f"{name}.nii.gz", volume, affine)
        paths.append(str(tmp_path / f"{name}.nii.gz"))
    frame, moved_frame = (symmetry_frame(path) for path in paths)
    # moved voxel x shows the head at motion x, so its cloud is motion^-1 of the head's
    signs = np.sign(np.diag(np.linalg.inv(frame) @ motion @ moved_frame)[:3])
    assert np.prod(signs) > 0  # both frames right-handed: the flips keep a proper rotation
    recovered = frame @ np.diag([*signs, 1.0]) @ np.linalg.inv(moved_frame)
    assert _rotation_angle_deg(recovered, motion) < 2.0
    center_error = np.linalg.norm(recovered[:3, 3] - motion[:3, 3])
    assert center_error < 1.0, center_error


@pytest.fixture(scope="module")
def head_pair(tmp_path_factory):
    """A synthetic CT-like moving / T1-like fixed head pair, rigid only, on two different grids.

    The grid is not cubic so that the head is an ellipsoid (semi-axes follow the grid's extents):
    on a cubic grid the generated heads are nearly spherical and their principal axes undefined.
    """
    folder = tmp_path_factory.mktemp("head")
    generator = SyntheticPairGenerator(
        shape=(64, 52, 44),
        spacing=3.0,
        modalities=("ct", "t1"),
        deformation_mm=0.0,
        rotation_deg=10.0,
        translation_mm=5.0,
        moving_grid="random",
        skull_probability=1.0,
    )
    pair = generator(HEAD_SEED)
    paths = {}
    for key in ("fixed", "moving"):
        paths[key] = str(folder / f"{key}.nii.gz")
        save_nifti(paths[key], pair[key][0].numpy(), pair[key].affine.numpy())
    center = grid_center_lps(pair["fixed"].affine.numpy(), pair["fixed"].shape[1:])
    return {
        **paths,
        "true_lps": ras_to_lps(pair["true_affine"].numpy()),
        "centre_lps": center,
        "folder": folder,
        "fixed_head": pair["fixed_label"][0].numpy() > 0,
    }


@pytest.fixture(scope="module")
def written(head_pair):
    out = head_pair["folder"] / "out"
    matrix = write_ground_truth(head_pair["fixed"], head_pair["moving"], out)
    return out, matrix


def test_ground_truth_recovers_a_known_rigid_motion_of_a_synthetic_head(head_pair, written):
    out, matrix = written
    before = rigid_errors(np.eye(4), head_pair["true_lps"], head_pair["centre_lps"])
    errors = rigid_errors(matrix, head_pair["true_lps"], head_pair["centre_lps"])
    assert before["rotation_error_deg"] > 5.0 and before["translation_error_mm"] > 3.0  # a real motion to find
    assert errors["rotation_error_deg"] < 1.0 and errors["translation_error_mm"] < 1.0, errors
    record = json.loads((out / "rigid.json").read_text())
    assert record["method"] == "groundtruth" and record["symmetry_alignment"] is True
    assert np.allclose(record["center_mm"], head_pair["centre_lps"], atol=1e-3)


def _settled_frames(head_pair, turn_moving_frame: np.ndarray):
    """The pair's fixed frame, and the moving frame settled from its symmetry frame turned by ``turn_moving_frame``."""
    import itk

    fixed, moving = (itk.imread(head_pair[key], itk.F) for key in ("fixed", "moving"))
    fixed_frame = symmetry_frame(fixed)
    return fixed_frame, settle_moving_frame(fixed, fixed_frame, moving, symmetry_frame(moving) @ turn_moving_frame)


def test_settling_the_moving_frame_undoes_any_order_of_its_axes(head_pair):
    """CT and MR clouds of a nearly spherical head can order their principal axes differently; the settled frame follows the head."""
    cyclic = np.eye(4)[[1, 2, 0, 3]]  # axes (x, y, z) relabelled (y, z, x): a proper rotation no sign flip undoes
    fixed_frame, settled = _settled_frames(head_pair, cyclic)
    # the moving head is the fixed head moved by the true motion, so its frame is the motion applied to the fixed frame
    assert _rotation_angle_deg(settled, head_pair["true_lps"] @ fixed_frame) < 2.0


def test_settling_falls_back_to_the_fixed_axes_when_no_relabelling_of_the_moving_frame_fits(head_pair):
    """A principal frame turned 45 degrees off the head (ill-defined axes) loses to "the heads turned alike".

    The latter starts the registration as the plain run does.
    """
    turned = rigid_matrix([45.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    fixed_frame, settled = _settled_frames(head_pair, turned)
    assert np.allclose(settled[:3, :3], fixed_frame[:3, :3])


def test_written_tfm_maps_points_as_the_returned_matrix_and_the_warped_ct_lies_on_the_fixed_head(head_pair, written):
    import itk

    out, matrix = written
    transform = itk.transformread(str(out / "rigid.tfm"))[0]
    for point in np.random.default_rng(0).uniform(-80, 80, (5, 3)):
        by_itk = np.array(transform.TransformPoint([float(v) for v in point]))
        assert np.allclose(by_itk, matrix[:3] @ np.append(point, 1.0), atol=1e-6)
    warped, warped_affine = load_nifti(str(out / "warped.nii.gz"))
    _, fixed_affine = load_nifti(head_pair["fixed"])
    assert np.allclose(warped_affine, fixed_affine, atol=1e-4)
    # the moving CT's head (above -500 HU) sampled through the transform covers the fixed image's head
    warped_head, fixed_head = warped > -500.0, head_pair["fixed_head"]
    dice = 2.0 * (warped_head & fixed_head).sum() / (warped_head.sum() + fixed_head.sum())
    assert dice > 0.97, dice


def test_groundtruth_command_on_a_missing_file_names_it_and_writes_nothing(head_pair, tmp_path):
    missing, out = tmp_path / "missing.nii.gz", tmp_path / "out"
    command = ["groundtruth", "--fixed", str(missing), "--moving", head_pair["moving"], "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "regplugins", *command], capture_output=True, encoding="utf-8", errors="replace", cwd=ROOT, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"error: {missing}: file not found."
    assert not out.exists()
