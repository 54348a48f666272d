import json

import nibabel as nib
import numpy as np
import pytest

from regplugins.io import (
    RAS_TO_LPS,
    RegistrationInputError,
    check_registration_inputs,
    load_itk_displacement_field,
    pair_output_name,
    registration_pairs,
    save_itk_displacement_field,
    save_nifti,
)

OBLIQUE = np.array([[0.0, -1.5, 0.0, 10.0], [0.0, 0.0, 2.0, -20.0], [-1.2, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]])


def test_itk_field_of_a_known_translation_moves_points_by_it(tmp_path):
    import itk

    shape = (10, 12, 14)
    translation_ras = np.array([3.0, -2.0, 5.0])
    field = np.broadcast_to(translation_ras.reshape(3, 1, 1, 1), (3, *shape)).copy()
    path = tmp_path / "ddf.nii.gz"
    save_itk_displacement_field(path, field, OBLIQUE)

    image = itk.imread(str(path), pixel_type=itk.Vector[itk.F, 3])
    transform = itk.DisplacementFieldTransform[itk.F, 3].New()
    transform.SetDisplacementField(image)
    for voxel in ([4, 5, 6], [1, 1, 1], [8, 10, 12]):
        point_lps = RAS_TO_LPS @ (OBLIQUE @ np.array([*voxel, 1.0]))[:3]
        moved = np.array(transform.TransformPoint(point_lps.tolist()))
        assert np.allclose(moved - point_lps, RAS_TO_LPS @ translation_ras, atol=1e-4)
    # the grid is the one we gave, and reading it back without ITK gives the same field
    assert np.allclose(np.array(image.GetOrigin()), RAS_TO_LPS @ OBLIQUE[:3, 3])
    back, affine = load_itk_displacement_field(path)
    assert np.allclose(back, field, atol=1e-5)
    assert np.allclose(affine, OBLIQUE, atol=1e-4)
    header = nib.load(str(path)).header
    assert int(header["intent_code"]) == 1007 and header.get_data_shape() == (*shape, 1, 3)


def test_itk_reads_a_2d_field_on_its_grid_with_its_lps_vectors(tmp_path):
    import itk

    affine = np.array([[0.0, -1.5, 10.0], [1.2, 0.0, -20.0], [0.0, 0.0, 1.0]])
    field = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    path = tmp_path / "ddf.nii.gz"
    save_itk_displacement_field(path, field, affine)

    image = itk.imread(str(path), pixel_type=itk.Vector[itk.F, 2])
    assert np.allclose(np.array(image.GetOrigin()), [-10.0, 20.0])
    assert np.allclose(np.array(image.GetSpacing()), [1.2, 1.5])
    vectors = np.transpose(itk.array_from_image(image), (1, 0, 2))  # ITK indexes y, x
    assert np.allclose(vectors, np.moveaxis(field, 0, -1) * [-1.0, -1.0], atol=1e-6)
    assert np.allclose(load_itk_displacement_field(path)[0], field, atol=1e-6)


def write_image(path, data, affine=np.eye(4)):
    save_nifti(path, np.asarray(data, dtype=np.float32), affine)
    return str(path)


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    fixed = write_image(tmp_path / "fixed.nii.gz", rng.random((8, 8, 8)))
    moving = write_image(tmp_path / "moving.nii.gz", rng.random((8, 8, 8)))
    label = write_image(tmp_path / "label.nii.gz", (rng.random((8, 8, 8)) > 0.5))
    return {"fixed": fixed, "moving": moving, "moving_label": label}


def test_good_inputs_pass_and_datalists_resolve_relative_paths(tmp_path, good):
    check_registration_inputs([good])
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps([{"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "fixed_label": "label.nii.gz"}]))
    pairs = registration_pairs(datalist=str(datalist))
    assert pairs == [{"fixed": good["fixed"], "moving": good["moving"], "fixed_label": good["moving_label"]}]
    assert pair_output_name("/a/b/ct_01.nii.gz", "/c/mr_01.nii") == "ct_01_to_mr_01"


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", "file not found"),
        ("unreadable", "not a readable NIfTI"),
        ("two_d", "a 3D image is needed"),
        ("nan", "NaN"),
        ("constant", "constant"),
        ("label_grid", "label grid"),
    ],
)
def test_bad_inputs_are_named_with_their_problem(tmp_path, good, problem, expected):
    pair = dict(good)
    bad = tmp_path / "bad.nii.gz"
    if problem == "missing":
        pair["moving"] = str(tmp_path / "nowhere.nii.gz")
    elif problem == "unreadable":
        bad.write_bytes(b"not an image")
        pair["moving"] = str(bad)
    elif problem == "two_d":
        pair["moving"] = write_image(bad, np.random.rand(8, 8))
    elif problem == "nan":
        data = np.random.rand(8, 8, 8)
        data[2, 2, 2] = np.nan
        pair["fixed"] = write_image(bad, data)
    elif problem == "constant":
        pair["fixed"] = write_image(bad, np.full((8, 8, 8), 5.0))
    elif problem == "label_grid":
        pair["moving_label"] = write_image(bad, np.ones((8, 8, 7)))
    with pytest.raises(RegistrationInputError, match=expected) as error:
        check_registration_inputs([pair])
    assert str(error.value).startswith(pair["moving"] if problem in ("missing", "unreadable", "two_d") else str(bad))


def test_labels_on_their_own_grid_are_warped_through_their_own_grid(tmp_path):
    import torch

    from regplugins.layers import warp_physical
    from regplugins.transforms.io import warp_native_images

    rng = np.random.default_rng(0)
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    save_nifti(tmp_path / "fixed.nii.gz", np.zeros((8, 9, 10)), fixed_affine)
    image_affine, label_affine = OBLIQUE, np.diag([3.0, 3.0, 3.0, 1.0])
    image, label = rng.random((12, 10, 9)), rng.integers(0, 4, (12, 10, 9))  # one shape, two grids
    save_nifti(tmp_path / "moving.nii.gz", image, image_affine)
    save_nifti(tmp_path / "label.nii.gz", label, label_affine, dtype=np.int32)
    field = rng.normal(size=(3, 8, 9, 10)).astype(np.float32)

    outputs = warp_native_images(field, str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), str(tmp_path / "label.nii.gz"))

    for name, volume, affine, mode in (("warped", image, image_affine, "bilinear"), ("warped_label", label, label_affine, "nearest")):
        alone = warp_physical(torch.tensor(volume, dtype=torch.float32)[None, None], torch.as_tensor(affine),
                              torch.from_numpy(field)[None], torch.as_tensor(fixed_affine), mode=mode)
        np.testing.assert_allclose(outputs[name], alone[0, 0].numpy(), atol=1e-5)
    assert np.isin(outputs["warped_label"], np.arange(4)).all() and outputs["warped_label"].any()
