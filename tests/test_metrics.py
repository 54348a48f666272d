import numpy as np

from regplugins.metrics import (
    field_error,
    fit_rigid,
    folding_percent,
    inverse_consistency_error,
    jacobian_determinant,
    label_overlap,
    rigid_errors,
    score_registration,
    std_log_jacobian,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def world_points(shape, affine):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(np.float64)
    return np.einsum("ij,j...->i...", affine[:3, :3], grid) + affine[:3, 3].reshape(3, 1, 1, 1)


def test_jacobian_of_a_linear_map_is_its_determinant_on_any_grid():
    shape = (10, 9, 8)
    linear = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 1.1]])
    for affine in (AFFINE, np.array([[0, -1.5, 0, 4], [0, 0, 2.0, 1], [-1.0, 0, 0, 2], [0, 0, 0, 1]])):
        x = world_points(shape, affine)
        field = np.einsum("ij,j...->i...", linear - np.eye(3), x)
        jacobian = jacobian_determinant(field, affine)
        assert np.allclose(jacobian, np.linalg.det(linear), atol=1e-6)
        assert folding_percent(jacobian) == 0.0
        assert std_log_jacobian(jacobian) < 1e-6


def test_folding_is_detected():
    x = world_points((12, 8, 8), AFFINE)
    field = np.zeros_like(x)
    field[0] = -2.5 * x[0]  # x -> -1.5 x flips the first axis: every voxel folds
    assert folding_percent(jacobian_determinant(field, AFFINE)) == 100.0


def test_registration_scores_check_the_inverse_over_the_head_and_its_own_folding(tmp_path):
    """``inverse_ddf.nii.gz`` is scored where the fixed labels say the head is, and for folds of its own."""
    from regplugins.io import save_itk_displacement_field, save_nifti

    shape = (12, 8, 8)
    forward = np.zeros((3, *shape))
    forward[1] = 4.0
    inverse = -forward
    inverse[1, 6:] = 0.0  # wrong beyond the head, which is the first half of the first axis
    head = np.zeros(shape)
    head[:6] = 1
    save_nifti(tmp_path / "head.nii.gz", head, AFFINE)
    save_itk_displacement_field(tmp_path / "ddf.nii.gz", forward, AFFINE)
    save_itk_displacement_field(tmp_path / "inverse_ddf.nii.gz", inverse, AFFINE)
    scores = score_registration({"fixed_label": str(tmp_path / "head.nii.gz")}, tmp_path)
    assert scores["inverse_consistency_mm"] < 1e-5
    assert scores["inverse_folding_percent"] == 0.0
    assert score_registration({}, tmp_path)["inverse_consistency_mm"] > 1.0  # without labels every point counts

    x = world_points(shape, AFFINE)
    flipped = np.zeros_like(x)
    flipped[0] = -2.5 * x[0]  # x -> -1.5 x: every voxel of the moving grid folds, none of the fixed grid
    save_itk_displacement_field(tmp_path / "inverse_ddf.nii.gz", flipped, AFFINE)
    scores = score_registration({}, tmp_path)
    assert scores["folding_percent"] == 0.0
    assert scores["inverse_folding_percent"] == 100.0


def test_inverse_consistency_and_field_error():
    shape = (8, 8, 8)
    forward = np.zeros((3, *shape))
    forward[1] = 4.0
    assert inverse_consistency_error(forward, AFFINE, -forward, AFFINE) < 1e-5
    assert np.isclose(inverse_consistency_error(forward, AFFINE, np.zeros_like(forward), AFFINE), 4.0)
    assert np.isclose(field_error(forward, np.zeros_like(forward)), 4.0)
    # a moving grid of the lower half only: what the forward field sends beyond it has no inverse to check
    forward[1, :, :, 4:] = 8.0
    assert inverse_consistency_error(forward, AFFINE, -forward[:, :, :, :4], AFFINE) < 1e-5


def test_rigid_errors():
    angle = np.radians(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    shifted = np.eye(4)
    shifted[:3, 3] = [3.0, 4.0, 0.0]
    errors = rigid_errors(rotation @ shifted, shifted)
    assert np.isclose(errors["rotation_error_deg"], 10.0)
    assert rigid_errors(shifted, np.eye(4))["translation_error_mm"] == 5.0


def test_rigid_fit_of_a_rigid_field_recovers_the_motion():
    angle = np.radians(7.0)
    motion = np.eye(4)
    motion[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = [1.0, -2.0, 3.0]
    affine = np.array([[0, -1.5, 0, 4], [0, 0, 2.0, 1], [-1.0, 0, 0, 2], [0, 0, 0, 1]])
    x = world_points((10, 9, 8), affine)
    field = np.einsum("ij,j...->i...", motion[:3, :3], x) + motion[:3, 3].reshape(3, 1, 1, 1) - x
    assert np.allclose(fit_rigid(field, affine), motion, atol=1e-6)
    errors = rigid_errors(fit_rigid(field, affine, mask=np.ones(field.shape[1:])), motion)
    assert errors["rotation_error_deg"] < 1e-4 and errors["translation_error_mm"] < 1e-6


def test_label_overlap_in_mm():
    truth = np.zeros((20, 20, 20))
    truth[5:15, 5:15, 5:15] = 1
    pred = np.roll(truth, 2, axis=0)
    scores = label_overlap(pred, truth, spacing=(1.5, 1.0, 1.0))
    assert np.isclose(scores[1]["dice"], 0.8)
    assert np.isclose(scores[1]["hd95"], 3.0)  # 2 voxels of 1.5 mm
    assert label_overlap(truth, truth, spacing=(1, 1, 1))[1]["dice"] == 1.0
    assert label_overlap(np.zeros_like(truth), truth, spacing=(1, 1, 1))[1]["dice"] == 0.0
