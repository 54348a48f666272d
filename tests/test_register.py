"""`regplugins register` and `regplugins apply`, as a user coming from ANTs or uniGradICON calls them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from regplugins.io import load_nifti, pair_output_name, save_nifti

from conftest import ROOT, itk_resample


def regplugins(*args: str, cwd: Path = ROOT, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT)) if python == sys.executable else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-m", "regplugins", *args], capture_output=True, encoding="utf-8", errors="replace", cwd=cwd, env=env, timeout=600)


def write_dicom_series(image_path: str, folder: Path) -> Path:
    """A DICOM series (one file per axial slice, int16) of a NIfTI image, its geometry in the slices' position tags."""
    import SimpleITK as sitk

    image = sitk.Cast(sitk.ReadImage(image_path), sitk.sitkInt16)
    folder.mkdir()
    direction, series = image.GetDirection(), "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|000d": series + ".1",
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


@pytest.fixture(scope="module")
def pair(pairs, tmp_path_factory) -> dict:
    """The first test pair with a moving CT of whole Hounsfield units, which every format stores exactly."""
    folder = tmp_path_factory.mktemp("pair")
    data, affine = load_nifti(pairs[0]["moving"])
    save_nifti(folder / "moving.nii.gz", np.rint(data), affine, dtype=np.int16)
    return {"fixed": pairs[0]["fixed"], "moving": str(folder / "moving.nii.gz"), "moving_label": pairs[0]["moving_label"]}


def test_every_image_format_registers_as_its_nifti(pair, tmp_path):
    import itk

    from regplugins.register import register_pairs

    moving = itk.imread(pair["moving"])
    copies = {"nrrd": tmp_path / "moving_nrrd.nrrd", "mha": tmp_path / "moving_mha.mha", "mhd": tmp_path / "moving_mhd.mhd"}
    for path in copies.values():
        itk.imwrite(moving, str(path))
    image = nib.load(pair["moving"])
    copies["mgz"] = tmp_path / "moving_mgz.mgz"
    nib.save(nib.MGHImage(np.asanyarray(image.dataobj).astype(np.int16), image.affine), str(copies["mgz"]))
    copies["dicom"] = write_dicom_series(pair["moving"], tmp_path / "moving_dicom")
    datalist = tmp_path / "pairs.json"
    entries = [{"fixed": pair["fixed"], "moving": path} for path in (pair["moving"], *map(str, copies.values()))]
    datalist.write_text(json.dumps(entries))

    summary = register_pairs(datalist=str(datalist), out=str(tmp_path / "out"), refine_iterations=0)

    assert summary["done"] == 6 and summary["failed"] == 0, summary
    reference = nib.load(str(tmp_path / "out" / pair_output_name(pair["moving"], pair["fixed"]) / "warped.nii.gz")).get_fdata()
    for kind, path in copies.items():
        folder = tmp_path / "out" / pair_output_name(str(path), pair["fixed"])  # named after the user's file, moving_<kind>
        warped = nib.load(str(folder / "warped.nii.gz"))
        assert np.allclose(warped.affine, nib.load(pair["fixed"]).affine, atol=1e-4)
        np.testing.assert_allclose(warped.get_fdata(), reference, atol=1e-2, err_msg=kind)


@pytest.mark.slow
@pytest.mark.parametrize("rigid", [False, True], ids=["deformable", "rigid"])
def test_register_prints_a_line_per_pair_and_apply_reproduces_its_outputs(pair, tmp_path, rigid):
    import itk
    import matplotlib.pyplot as plt

    fixed, moving = tmp_path / "fixed.mha", tmp_path / "moving.nrrd"
    itk.imwrite(itk.imread(pair["fixed"]), str(fixed))
    itk.imwrite(itk.imread(pair["moving"]), str(moving))
    result = regplugins(
        "register",
        str(fixed),
        str(moving),
        "--out",
        str(tmp_path / "out"),
        "--moving-label",
        pair["moving_label"],
        "--qc",
        *(["--rigid"] if rigid else ["--refine-iterations", "5"]),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "out" / "moving_to_fixed"
    assert result.stdout.splitlines() == [result.stdout.strip()] and str(folder) in result.stdout
    picture = plt.imread(str(folder / "qc.png"))  # three planes by four columns
    assert picture.shape[0] > 600 and picture.shape[1] > 800 and picture[..., :3].std() > 0.1

    transform = folder / ("rigid.tfm" if rigid else "ddf.nii.gz")
    for name, source, nearest in (("warped", moving, []), ("warped_label", pair["moving_label"], ["--nearest"])):
        applied = tmp_path / f"{name}_applied.nii.gz"
        result = regplugins(
            "apply", "--transform", str(transform), "--moving", str(source), "--reference", str(fixed), "--out", str(applied), *nearest
        )
        assert result.returncode == 0, result.stderr[-3000:]
        ours = nib.load(str(folder / f"{name}.nii.gz")).get_fdata()
        np.testing.assert_allclose(nib.load(str(applied)).get_fdata(), ours, atol=1e-3 * np.abs(ours).max())
    if not rigid:  # and ITK's own resampling with the field agrees
        by_itk = itk_resample(str(moving), str(fixed), transform)
        assert np.abs(by_itk - nib.load(str(folder / "warped.nii.gz")).get_fdata()).max() < 1e-3 * np.abs(by_itk).max()


def test_apply_refuses_a_field_whose_grid_does_not_cover_the_reference(pair, tmp_path):
    from regplugins.io import save_itk_displacement_field

    ddf = tmp_path / "ddf.nii.gz"
    save_itk_displacement_field(ddf, np.zeros((3, 10, 10, 10), dtype=np.float32), np.eye(4))
    result = regplugins(
        "apply", "--transform", str(ddf), "--moving", pair["moving"], "--reference", pair["fixed"], "--out", str(tmp_path / "w.nii.gz")
    )
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith(f"error: {ddf}: the field's grid does not cover")
    assert not (tmp_path / "w.nii.gz").exists()


@pytest.mark.slow
def test_a_cohort_goes_on_past_a_failing_pair_and_resumes(pair, pairs, tmp_path):
    datalist = tmp_path / "pairs.json"
    entries = [{"fixed": p["fixed"], "moving": p["moving"]} for p in pairs]
    entries.insert(1, {"fixed": pairs[1]["fixed"], "moving": str(tmp_path / "absent.nii.gz")})
    datalist.write_text(json.dumps(entries))
    out = tmp_path / "out"

    result = regplugins("register", "--datalist", str(datalist), "--out", str(out), "--refine_iterations", "0")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        len(lines) == 3 and lines[1] == f"[2/3] absent_to_{Path(pairs[1]['fixed']).name[:-7]}: error: {tmp_path / 'absent.nii.gz'}: file not found."
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [p["status"] for p in summary["pairs"]] == ["done", "failed", "done"] and summary["bundle"] == "ct_mr_gradient_fusion_reg"
    assert all((Path(p["output"]) / "warped.nii.gz").exists() for p in summary["pairs"] if p["status"] == "done")

    again = regplugins("register", "--datalist", str(datalist), "--out", str(out), "--skip_existing")
    assert [p["status"] for p in json.loads((out / "summary.json").read_text())["pairs"]] == ["skipped", "failed", "skipped"], again.stdout


def test_the_default_bundle_follows_the_modalities(pairs):
    from regplugins.register import DEFAULT_BUNDLES, default_bundle

    ct, t1 = pairs[0]["moving"], pairs[0]["fixed"]
    assert default_bundle(t1, ct) == DEFAULT_BUNDLES["ct_mr"] == default_bundle(ct, t1)
    assert default_bundle(t1, t1) == DEFAULT_BUNDLES["mr_mr"]
    assert default_bundle(t1, ct, rigid=True) == DEFAULT_BUNDLES["rigid"]


def test_bundles_are_found_by_name_in_a_folder_the_user_names(tmp_path, monkeypatch):
    from regplugins.bundles import BUNDLES_DIR_VARIABLE, bundle_root

    shutil.copytree(ROOT / "bundles" / "fcn_multires_selfsup_reg" / "configs", tmp_path / "my_bundle" / "configs")
    with pytest.raises(ValueError, match=f"my_bundle: not a bundle.*set {BUNDLES_DIR_VARIABLE}"):
        bundle_root("my_bundle")
    monkeypatch.setenv(BUNDLES_DIR_VARIABLE, str(tmp_path))
    assert bundle_root("my_bundle") == tmp_path / "my_bundle"


@pytest.mark.slow
def test_register_works_from_a_wheel_installed_without_the_checkout(pair, tmp_path):
    """A normal (not editable) install finds the bundles it carries as data files, from any folder."""
    import sysconfig

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ROOT)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    # the project's dependencies come from this environment's site-packages, regplugins only from the wheel:
    # a path added by a .pth file is not a site folder, so the editable install's own .pth there is not run
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            *map(str, (tmp_path / "wheel").glob("*.whl")),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]

    result = regplugins(
        "register",
        pair["fixed"],
        pair["moving"],
        "--out",
        str(tmp_path / "out"),
        "--refine_iterations",
        "0",
        cwd=tmp_path,
        python=str(venv / "bin" / "python"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["bundle_root"].startswith(str(venv))
    assert (tmp_path / "out" / pair_output_name(pair["moving"], pair["fixed"]) / "ddf.nii.gz").exists()
