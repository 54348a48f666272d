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
        ("singular_affine", "affine is singular"),
        ("infinite_affine", "affine holds NaN or infinite"),
        ("huge_spacing", "voxel size 100000, 1, 1 mm is outside"),
        ("too_small", "5x5x5 voxels, at least 8"),
        ("no_overlap", "does not overlap"),
        ("fractional_label", "labels must be whole numbers, found 1.5"),
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
    elif problem in ("singular_affine", "infinite_affine", "huge_spacing", "no_overlap"):
        affine = np.eye(4)
        if problem == "singular_affine":  # a zero column in the sform; a qform cannot hold one
            image = nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), None)
            affine[:, 0] = 0.0
            image.set_sform(affine, code=1)
            nib.save(image, str(bad))
            pair["moving"] = str(bad)
        elif problem == "infinite_affine":
            affine[0, 3] = np.inf
        elif problem == "huge_spacing":
            affine[0, 0] = 1e5
        else:
            affine[:3, 3] = 500.0
        if problem != "singular_affine":
            pair["moving"] = write_image(bad, np.random.rand(8, 8, 8), affine)
    elif problem == "too_small":
        pair["moving"] = write_image(bad, np.random.rand(5, 5, 5))
    elif problem == "fractional_label":
        label = np.zeros((8, 8, 8))
        label[2:5, 2:5, 2:5], label[5, 5, 5] = 1.0, 1.5  # rounding would merge 1.5 into label 2, or 1
        pair["moving_label"] = write_image(bad, label)
    with pytest.raises(RegistrationInputError, match=expected) as error:
        check_registration_inputs([pair])
    assert str(error.value).startswith(pair["moving"] if problem in ("missing", "unreadable", "two_d") else str(bad))


def test_an_output_dir_that_cannot_take_outputs_stops_before_anything_is_made(tmp_path):
    from regplugins.io import checked_output_dir

    a_file = tmp_path / "results.txt"
    a_file.write_text("a user's file")
    for output_dir, problem in (
        (a_file, "is a file, not a folder"),
        (a_file / "pairs", "results.txt is a file"),
        ("/proc/self/out", "/proc/self is not writable"),
    ):
        with pytest.raises(SystemExit, match=problem) as error:
            checked_output_dir(str(output_dir))
        assert str(error.value).startswith(f"error: {output_dir}: ")
    assert checked_output_dir(str(tmp_path / "new" / "folder")) and not (tmp_path / "new").exists()


def test_labels_on_their_own_grid_are_warped_through_their_own_grid(tmp_path):
    import torch

    from regplugins.layers import physical_sample_points, sample_like_itk
    from regplugins.outputs import warp_native_images

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
        points = physical_sample_points(torch.from_numpy(field)[None], torch.as_tensor(fixed_affine), torch.as_tensor(affine))
        alone = sample_like_itk(torch.tensor(volume, dtype=torch.float32)[None, None], points, mode=mode)
        np.testing.assert_allclose(outputs[name], alone[0, 0].numpy(), atol=1e-5)
    assert np.isin(outputs["warped_label"], np.arange(4)).all() and outputs["warped_label"].any()


def _oblique_pair(tmp_path):
    """A moving image on an oblique grid, a fixed grid, and a smooth field that sends part of it over the moving image's edge."""
    rng = np.random.default_rng(1)
    fixed_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    fixed_affine[:3, 3] = [-5.0, -22.0, 15.0]  # a box around the moving image, with room outside it
    save_nifti(tmp_path / "fixed.nii.gz", rng.random((14, 13, 12)), fixed_affine)
    save_nifti(tmp_path / "moving.nii.gz", 100.0 + 50.0 * rng.random((12, 10, 9)), OBLIQUE)
    save_nifti(tmp_path / "label.nii.gz", rng.integers(0, 4, (12, 10, 9)), OBLIQUE, dtype=np.int32)
    x = np.linspace(0, np.pi, 14)[:, None, None]
    field = np.stack([3.0 * np.sin(x + np.zeros((14, 13, 12))), -2.0 * np.cos(x) + np.zeros((14, 13, 12)), np.full((14, 13, 12), 1.3)])
    return {key: str(tmp_path / f"{key}.nii.gz") for key in ("fixed", "moving", "label")}, field.astype(np.float32)


def test_warped_equals_itk_resampling_with_the_field_everywhere_on_an_oblique_pair(tmp_path):
    """The border shell of the moving image used to differ from ITK by up to 60 % of the intensity range."""
    from regplugins.outputs import warp_native_images, write_registration_outputs

    from conftest import itk_resample

    paths, field = _oblique_pair(tmp_path)
    outputs = warp_native_images(field, paths["fixed"], paths["moving"], paths["label"])
    folder = write_registration_outputs(tmp_path / "out", outputs)
    warped, label = nib.load(str(folder / "warped.nii.gz")).get_fdata(), nib.load(str(folder / "warped_label.nii.gz")).get_fdata()
    assert 0.2 < (warped == 0).mean() < 0.8  # the field reaches outside the moving image, and its edge, not only the inside
    by_itk = itk_resample(paths["moving"], paths["fixed"], folder / "ddf.nii.gz")
    assert np.abs(by_itk - warped).max() < 1e-3 * 150.0
    labels_by_itk = itk_resample(paths["label"], paths["fixed"], folder / "ddf.nii.gz", nearest=True)
    assert (labels_by_itk == label).mean() > 0.999  # nearest neighbour may differ where a point falls on a voxel's half


def test_a_coarser_ddf_file_is_what_itk_reads_and_its_cost_is_stated(tmp_path):
    """``ddf_spacing`` shrinks ddf.nii.gz; warped.nii.gz then follows the field ITK reads from it, and quality.json says how far that is."""
    from regplugins.outputs import warp_native_images, write_registration_outputs
    from regplugins.register import apply_transform

    from conftest import itk_resample

    paths, field = _oblique_pair(tmp_path)
    outputs = warp_native_images(field, paths["fixed"], paths["moving"], paths["label"], ddf_spacing=4.5)  # the fixed grid's 1.5 mm, times 3
    cost = outputs["ddf_file_error_mm"]
    assert 0.0 < cost["mean"] < cost["max"] < 0.5  # the sine is not linear between coarse voxels, but smooth
    folder = write_registration_outputs(tmp_path / "out", outputs, quality={"ddf_file_error_mm": cost})
    written = nib.load(str(folder / "ddf.nii.gz"))
    assert written.shape[:3] == (6, 5, 5) and np.allclose(written.affine[:3, :3], np.diag([4.5, 4.5, 4.5]))  # reaching past (14, 13, 12)
    warped = nib.load(str(folder / "warped.nii.gz")).get_fdata()
    assert np.abs(itk_resample(paths["moving"], paths["fixed"], folder / "ddf.nii.gz") - warped).max() < 1e-3 * 150.0
    full = warp_native_images(field, paths["fixed"], paths["moving"])
    assert np.abs(full["warped"] - warped).max() > 1e-3 * 150.0  # the full field would have warped otherwise
    applied = apply_transform(str(folder / "ddf.nii.gz"), paths["moving"], paths["fixed"], str(tmp_path / "applied.nii.gz"))
    np.testing.assert_allclose(nib.load(applied).get_fdata(), warped, atol=1e-3 * 150.0)  # `regplugins apply` reads it as ITK does


def test_a_rerun_keeps_the_users_files_and_drops_contract_files_it_does_not_write(tmp_path):
    from regplugins.outputs import warp_native_images, write_registration_outputs

    paths, field = _oblique_pair(tmp_path)
    folder = write_registration_outputs(tmp_path / "out" / "pair", warp_native_images(field, paths["fixed"], paths["moving"], paths["label"]))
    (folder / "notes.txt").write_text("reviewed")
    write_registration_outputs(folder, warp_native_images(field, paths["fixed"], paths["moving"]), quality={"kept": "network"})
    assert sorted(p.name for p in folder.iterdir()) == ["ddf.nii.gz", "notes.txt", "quality.json", "warped.nii.gz"]
    assert not [p.name for p in folder.parent.iterdir() if p.name.endswith(".partial")]


SAVE_ONE_PAIR = """
import sys, numpy as np
from regplugins.outputs import write_registration_outputs
marker = float(sys.argv[2])
shape = (24, 24, 24)
outputs = {"warped": np.full(shape, marker), "ddf": np.full((3, *shape), marker), "fixed_affine": np.eye(4)}
write_registration_outputs(sys.argv[1], outputs, quality={"marker": marker})
"""


@pytest.mark.slow
def test_two_processes_saving_one_pair_at_once_leave_one_complete_run(tmp_path):
    """Two runs of one pair used to share a staging folder: one crashed, and the pair folder was gone."""
    import subprocess
    import sys

    from conftest import ROOT

    folder = tmp_path / "pair"
    for trial in range(4):
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", SAVE_ONE_PAIR, str(folder), str(trial * 10 + k)],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                errors="replace",
            )
            for k in (1, 2)
        ]
        assert [run.wait(timeout=120) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
        marker = json.loads((folder / "quality.json").read_text())["marker"]
        assert marker in (trial * 10 + 1, trial * 10 + 2)
        assert np.all(nib.load(str(folder / "warped.nii.gz")).get_fdata() == marker)
        assert np.all(nib.load(str(folder / "ddf.nii.gz")).get_fdata() == [-marker, -marker, marker])  # stored in LPS
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_slab_by_slab_warping_gives_the_whole_grids_result(tmp_path, monkeypatch):
    """Clinical grids are warped slab by slab to bound memory; the slabs must not show in the result."""
    import torch

    import regplugins.layers.spatial as spatial
    from regplugins.layers import resample_ddf
    from regplugins.outputs import warp_native_images

    paths, field = _oblique_pair(tmp_path)
    ddf = torch.randn(1, 3, 6, 7, 8)
    working, fixed_affine = torch.as_tensor(OBLIQUE), torch.as_tensor(nib.load(paths["fixed"]).affine)
    whole_field = resample_ddf(ddf, working, fixed_affine, field.shape[1:])
    whole = warp_native_images(field, paths["fixed"], paths["moving"], paths["label"])
    monkeypatch.setattr(spatial, "SLAB_VOXELS", 100)  # slabs of one slice
    assert len(spatial.slabs(field.shape[1:])) == field.shape[1]
    assert torch.equal(resample_ddf(ddf, working, fixed_affine, field.shape[1:]), whole_field)
    for name, value in warp_native_images(field, paths["fixed"], paths["moving"], paths["label"]).items():
        np.testing.assert_array_equal(value, whole[name], err_msg=name)


def test_skip_existing_leaves_out_the_pairs_with_finished_outputs_and_ends_a_finished_run(tmp_path, capsys):
    from regplugins.outputs import pending_pairs

    pairs = [{"fixed": f"/data/f{i}.nii.gz", "moving": f"/data/m{i}.nii.gz"} for i in range(3)]
    done = tmp_path / "m1_to_f1"
    done.mkdir()
    for name in ("warped.nii.gz", "ddf.nii.gz"):
        (done / name).write_bytes(b"")
    (tmp_path / "m2_to_f2").mkdir()  # a folder without the outputs: not finished
    (tmp_path / "m2_to_f2" / "warped.nii.gz").write_bytes(b"")
    assert pending_pairs(pairs, str(tmp_path)) == pairs
    assert pending_pairs(pairs, str(tmp_path), skip_existing="true") == [pairs[0], pairs[2]]
    assert "1 of 3 pairs already have their outputs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as finished:
        pending_pairs(pairs[1:2], str(tmp_path), skip_existing=True)
    assert finished.value.code == 0


def test_a_pairs_error_is_one_line_from_its_innermost_cause_even_on_a_circular_chain():
    """MONAI re-raises a transform's error from a chain that can loop back; summary.json needs the cause, in one line."""
    from regplugins.data.pairs import one_line_error

    inner, outer = ValueError("the problem\nand its details"), RuntimeError("applying transform")
    outer.__cause__, inner.__context__ = inner, outer
    assert one_line_error(outer, "moving.nii.gz") == "moving.nii.gz: ValueError: the problem"
    named = RuntimeError("applying transform")
    named.__cause__ = RegistrationInputError("label.nii.gz: values are not whole numbers")
    assert one_line_error(named, "moving.nii.gz") == "label.nii.gz: values are not whole numbers"


def test_inputs_itk_reads_reach_the_bundles_as_nifti_and_are_named_as_given(tmp_path, good):
    """Two NRRD files of one name in two folders stay two images; an error names the user's file."""
    import itk

    from regplugins.io import checked_pairs

    nrrd = {}
    for subject, key in (("a", "fixed"), ("b", "moving")):
        (tmp_path / subject).mkdir()
        nrrd[key] = str(tmp_path / subject / "image.nrrd")
        itk.imwrite(itk.imread(good[key]), nrrd[key])

    (pair,) = checked_pairs(nrrd["fixed"], nrrd["moving"], good["moving_label"])

    assert pair["fixed"] != pair["moving"] and pair["moving_label"] == good["moving_label"]
    for key in ("fixed", "moving"):
        assert pair[key].endswith("image.nii.gz")
        copy, original = nib.load(pair[key]), nib.load(good[key])
        np.testing.assert_array_equal(copy.get_fdata(), original.get_fdata())
        assert np.allclose(copy.affine, original.affine, atol=1e-5)
    assert pair_output_name(pair["moving"], pair["fixed"]) == pair_output_name(nrrd["moving"], nrrd["fixed"]) == "image_to_image"

    data = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    data[2, 2, 2] = np.nan
    itk.imwrite(itk.image_from_array(data), str(tmp_path / "nan.mha"))
    with pytest.raises(SystemExit) as stopped:
        checked_pairs(str(tmp_path / "nan.mha"), good["moving"])
    assert str(stopped.value) == f"error: {tmp_path / 'nan.mha'}: the image holds NaN or infinite values."


def test_two_pairs_that_would_write_one_output_folder_stop_before_any_work(tmp_path, good):
    from regplugins.io import checked_pairs

    datalist = tmp_path / "pairs.json"
    entries = [{"fixed": good["fixed"], "moving": good["moving"]}, {"fixed": good["moving"], "moving": good["fixed"]}]
    datalist.write_text(json.dumps(entries + [dict(entries[0])]))  # one folder per subject, the same names in each
    with pytest.raises(SystemExit, match=r"^error: .*pairs.json: entries 0 and 2 would both write the output folder moving_to_fixed"):
        checked_pairs(datalist=str(datalist))
    assert len(registration_pairs(datalist=str(datalist))) == 3  # reading a datalist writes nothing: the bench and augmentation may
    datalist.write_text(json.dumps(entries))
    assert len(checked_pairs(datalist=str(datalist))) == 2
