"""Every bundle end to end, through `python -m monai.bundle` as users call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.blocks import Warp

from regplugins.demo import labels_on_fixed_grid, mean_dice
from regplugins.io import load_itk_displacement_field, load_nifti, pair_output_name, registration_pairs
from regplugins.metrics import score_registration

from conftest import (
    BUNDLE,
    BUNDLES,
    ROOT,
    TRAINED_BUNDLES,
    itk_resample,
    predicts_rigid_parameters,
    read_datalist,
    refines_its_field,
    reoriented_copy,
    run_bundle,
    writes_inverse_field,
)

SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # offline copy of MONAI's metadata schema

# every test here runs bundles end to end
pytestmark = pytest.mark.slow


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, encoding="utf-8", errors="replace", env=env, cwd=ROOT, timeout=300
    )


@pytest.fixture(scope="module", params=BUNDLES, ids=lambda path: path.name)
def bundle(request):
    return request.param


def test_verify_metadata(bundle):
    result = monai_bundle("verify_metadata", "--meta_file", str(bundle / "configs/metadata.json"), "--filepath", str(SCHEMA))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_verify_net_in_out(bundle):
    meta, config = str(bundle / "configs/metadata.json"), str(bundle / "configs/inference.json")
    result = monai_bundle("verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config, "--n", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", TRAINED_BUNDLES, indirect=True, ids=lambda path: path.name)
def test_torchscript_export_of_the_trained_weights(bundle, tmp_path):
    meta, config = str(bundle / "configs/metadata.json"), str(bundle / "configs/inference.json")
    io_format = json.loads((bundle / "configs/metadata.json").read_text())["network_data_format"]
    # patch networks declare their sizes; the others take any multiple of 16
    inputs, outputs = (io_format[k][n]["spatial_shape"] for k, n in (("inputs", "image"), ("outputs", "pred")))
    in_shape, out_shape = (inputs, outputs) if isinstance(inputs[0], int) else ([32] * 3, [32] * 3)
    expected = (1, 6) if predicts_rigid_parameters(bundle) else (1, 3, *out_shape)
    exported = tmp_path / "model.ts"
    result = monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(bundle / "models/model.pt"),
        "--meta_file",
        meta,
        "--config_file",
        config,
        "--key_in_ckpt",
        "",
        "--use_trace",
        "True",
        "--input_shape",
        json.dumps([1, 2, *in_shape]),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    scripted = torch.jit.load(str(exported))
    assert scripted(torch.rand(1, 2, *in_shape)).shape == expected


@pytest.fixture(scope="module")
def registered(bundle, synthetic_pairs, tmp_path_factory):
    """The contract command on pair 0, with the fixed image stored in another orientation."""
    entry = read_datalist(synthetic_pairs)[0]
    folder = synthetic_pairs.parent
    fixed = reoriented_copy(str(folder / entry["fixed"]), tmp_path_factory.mktemp("fixed") / "fixed_t1.nii.gz")
    pair = {
        "fixed": fixed,
        "moving": str(folder / entry["moving"]),
        "moving_label": str(folder / entry["moving_label"]),
        "fixed_label": reoriented_copy(str(folder / entry["fixed_label"]), tmp_path_factory.mktemp("label") / "fixed_label.nii.gz"),
    }
    out = tmp_path_factory.mktemp("out")
    result = run_bundle(
        "--fixed_image",
        pair["fixed"],
        "--moving_image",
        pair["moving"],
        "--moving_label",
        pair["moving_label"],
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        bundle=bundle,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pair, out / pair_output_name(pair["moving"], pair["fixed"])


def test_contract_outputs_on_the_fixed_grid(bundle, registered):
    pair, folder = registered
    expected = {"ddf.nii.gz", "warped.nii.gz", "warped_label.nii.gz"} | ({"rigid.json", "rigid.tfm"} if predicts_rigid_parameters(bundle) else set())
    expected |= {"inverse_ddf.nii.gz"} if writes_inverse_field(bundle) else set()
    expected |= {"quality.json"} if refines_its_field(bundle) else set()
    assert {p.name for p in folder.iterdir()} == expected
    fixed = nib.load(pair["fixed"])
    for name in ("warped.nii.gz", "warped_label.nii.gz"):
        image = nib.load(str(folder / name))
        assert image.shape == fixed.shape
        assert np.allclose(image.affine, fixed.affine, atol=1e-4)
    ddf = nib.load(str(folder / "ddf.nii.gz"))
    assert ddf.shape == (*fixed.shape, 1, 3)
    assert np.allclose(ddf.affine, fixed.affine, atol=1e-4)
    if writes_inverse_field(bundle):
        moving = nib.load(pair["moving"])
        inverse = nib.load(str(folder / "inverse_ddf.nii.gz"))
        assert inverse.shape == (*moving.shape, 1, 3)
        assert np.allclose(inverse.affine, moving.affine, atol=1e-4)
    assert not list(folder.parent.glob(".*partial"))


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if writes_inverse_field(b)], indirect=True, ids=lambda path: path.name)
def test_inverse_field_undoes_the_pre_aligned_and_refined_forward_field(bundle, registered):
    """inverse_ddf.nii.gz composes with ddf.nii.gz to the identity inside the head, the pre-alignment and refinement included."""
    from regplugins.metrics import folding_percent, inverse_consistency_error, jacobian_determinant

    pair, folder = registered
    forward, forward_affine = load_itk_displacement_field(folder / "ddf.nii.gz")
    inverse, inverse_affine = load_itk_displacement_field(folder / "inverse_ddf.nii.gz")
    head = load_nifti(pair["fixed_label"])[0] > 0
    assert np.abs(forward).max() > 2.0  # mm: the pair was registered, not left alone
    assert inverse_consistency_error(forward, forward_affine, inverse, inverse_affine, head) < 0.5
    for field, affine in ((forward, forward_affine), (inverse, inverse_affine)):
        assert folding_percent(jacobian_determinant(field, affine)) < 0.5


@pytest.mark.parametrize("bundle", TRAINED_BUNDLES, indirect=True, ids=lambda path: path.name)
def test_trained_weights_improve_dice_over_no_registration(bundle, registered):
    pair, folder = registered
    truth, _ = load_nifti(pair["fixed_label"])
    before = mean_dice(labels_on_fixed_grid(pair), truth)
    after = mean_dice(load_nifti(str(folder / "warped_label.nii.gz"))[0], truth)
    assert after > before + 0.02, (before, after)


def test_itk_resampling_with_the_ddf_reproduces_warped(registered):
    pair, folder = registered
    by_itk = itk_resample(pair["moving"], pair["fixed"], folder / "ddf.nii.gz")
    ours, _ = load_nifti(str(folder / "warped.nii.gz"))
    # everywhere on the fixed grid, the moving image's border shell and the outside included
    assert np.abs(by_itk - ours).max() < 1e-3 * np.abs(ours).max()


def test_images_in_formats_itk_reads_register_as_their_nifti(pairs, tmp_path):
    """The contract command on NRRD and MHA files: the NIfTI files' outputs, and summary.json names the user's files."""
    import itk

    formats = {"fixed": ".nrrd", "moving": ".mha", "moving_label": ".nrrd"}
    given = {key: str(tmp_path / Path(pairs[0][key]).name.replace(".nii.gz", suffix)) for key, suffix in formats.items()}
    for key, path in given.items():
        itk.imwrite(itk.imread(pairs[0][key]), path)
    outputs = {}
    for name, pair in (("nifti", pairs[0]), ("itk", given)):
        outputs[name] = tmp_path / name
        result = run_bundle(
            *("--fixed_image", pair["fixed"], "--moving_image", pair["moving"], "--moving_label", pair["moving_label"]),
            *("--output_dir", str(outputs[name]), "--refine_iterations", "0", "--device", "cpu"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads((outputs["itk"] / "summary.json").read_text())["pairs"]
    assert (record["fixed"], record["moving"], record["status"]) == (given["fixed"], given["moving"], "done")
    folder = pair_output_name(pairs[0]["moving"], pairs[0]["fixed"])
    assert Path(record["output"]).name == folder == pair_output_name(given["moving"], given["fixed"])
    for name in ("warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz"):
        ours, reference = (nib.load(str(outputs[run] / folder / name)) for run in ("itk", "nifti"))
        assert np.allclose(ours.affine, reference.affine, atol=1e-4)
        np.testing.assert_allclose(ours.get_fdata(), reference.get_fdata(), atol=1e-3, err_msg=name)


@pytest.mark.parametrize("problem", ["missing", "nan", "two_d"])
def test_bad_input_one_clear_error_and_no_output(bundle, tmp_path, pairs, problem):
    bad = tmp_path / "bad.nii.gz"
    moving = pairs[0]["moving"]
    if problem == "missing":
        moving = str(tmp_path / "missing.nii.gz")
    elif problem == "nan":
        image = nib.load(pairs[0]["moving"])
        data = image.get_fdata()
        data[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(data, image.affine), str(bad))
        moving = str(bad)
    else:
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), str(bad))
        moving = str(bad)
    out = tmp_path / "out"
    result = run_bundle("--fixed_image", pairs[0]["fixed"], "--moving_image", moving, "--output_dir", str(out), bundle=bundle)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: " + moving), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("weights", ["missing", "not_a_checkpoint"])
def test_wrong_weights_path_one_clear_error_and_no_output(bundle, tmp_path, pairs, weights):
    """A weights file that is not there, or not a checkpoint, used to leave the network untrained without a word."""
    path = tmp_path / "model.pt"
    if weights == "not_a_checkpoint":
        path.write_text("not weights")
    out = tmp_path / "out"
    result = run_bundle(
        "--fixed_image", pairs[0]["fixed"], "--moving_image", pairs[0]["moving"], "--output_dir", str(out), "--ckpt_path", str(path), bundle=bundle
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_output_dir_that_is_a_file_stops_the_run_before_the_work(bundle, tmp_path, pairs):
    """It used to fail only after the whole registration, with four chained tracebacks."""
    out = tmp_path / "out"
    out.write_text("a user's file")
    result = run_bundle("--fixed_image", pairs[0]["fixed"], "--moving_image", pairs[0]["moving"], "--output_dir", str(out), bundle=bundle)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"error: {out}: output_dir is a file, not a folder.", result.stderr[-2000:]
    assert "Traceback" not in result.stderr and out.read_text() == "a user's file"
    assert list(tmp_path.iterdir()) == [out]


def test_an_untrained_network_takes_an_explicit_none_and_the_log_says_so(pairs, tmp_path):
    bundle = ROOT / "bundles" / "ct_mr_gradient_fusion_reg"
    result = run_bundle(
        "--fixed_image",
        pairs[0]["fixed"],
        "--moving_image",
        pairs[0]["moving"],
        "--output_dir",
        str(tmp_path),
        "--ckpt_path",
        "none",
        "--refine_iterations",
        "0",
        "--device",
        "cpu",
        bundle=bundle,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt_path none: the network runs untrained" in result.stdout + result.stderr
    assert "Restored all variables" not in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", TRAINED_BUNDLES, indirect=True, ids=lambda path: path.name)
def test_datalist_run_and_evaluate_config_score_every_pair(bundle, synthetic_pairs, tmp_path):
    out = tmp_path / "eval"
    configs = json.dumps([str(bundle / "configs/inference.json"), str(bundle / "configs/evaluate.json")])
    result = run_bundle("--datalist", str(synthetic_pairs), "--output_dir", str(out), config=configs, bundle=bundle)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["pairs"]) == 2
    for key in ("dice", "hd95", "asd", "folding_percent", "std_log_jacobian", "field_error_mm"):
        assert np.isfinite(metrics["mean"][key])
    # the scores are those of the written files, whatever the weights' quality (docs/benchmarks.md measures that)
    pair = registration_pairs(datalist=str(synthetic_pairs))[0]
    rescored = score_registration(pair, out / pair_output_name(pair["moving"], pair["fixed"]))
    assert np.isclose(metrics["pairs"][0]["dice"], rescored["dice"])
    assert np.isclose(metrics["pairs"][0]["folding_percent"], rescored["folding_percent"])


def test_multi_gpu_inference_shares_a_datalist_over_ranks_with_one_processs_outputs(synthetic_pairs, tmp_path):
    """Two gloo ranks on the CPU stand in for two GPUs: each registers its share, the outputs are those of one process.

    Exactly, at the same number of threads: with another, the CPU kernels round differently, by
    a few hundredths of a millimetre after the refinement's 30 Adam steps. A pair that fails on
    the way (a file where its output folder goes) is reported in one line and in summary.json;
    the other rank's pair is done all the same, and the run ends with status 1.
    """
    single = run_bundle("--datalist", str(synthetic_pairs), "--output_dir", str(tmp_path / "single"), "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (2, 0) and all(record["seconds"] > 0 for record in summary["pairs"])
    good, bad = (pair_output_name(pair["moving"], pair["fixed"]) for pair in registration_pairs(datalist=str(synthetic_pairs)))
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / bad).write_text("a user's file where the pair folder goes")
    configs = json.dumps([str(BUNDLE / "configs/inference.json"), str(BUNDLE / "configs/multi_gpu_inference.json")])
    result = run_bundle(
        "--datalist", str(synthetic_pairs), "--output_dir", str(tmp_path / "ranks"), config=configs, processes=2, env={"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode != 0
    # each rank ends with the one error line; the two ranks' stderr may interleave on one line
    assert result.stderr.count(f"error: {summary_error(tmp_path / 'ranks')}") == 2, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ranks" / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (1, 1), summary
    assert [record["status"] for record in summary["pairs"]] == ["done", "failed"] and bad in summary["pairs"][1]["error"]
    assert (tmp_path / "ranks" / bad).read_text() == "a user's file where the pair folder goes"
    for file in ("ddf.nii.gz", "warped.nii.gz"):
        ours, theirs = (nib.load(str(tmp_path / run / good / file)).get_fdata() for run in ("ranks", "single"))
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{good}/{file}")
    # a resumed run (--skip_existing true) finds every pair done and ends at once, touching nothing
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "single").rglob("*.nii.gz")}
    again = run_bundle("--datalist", str(synthetic_pairs), "--output_dir", str(tmp_path / "single"), "--skip_existing", "true")
    assert again.returncode == 0 and "pairs already have their outputs" in again.stdout, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "single").rglob("*.nii.gz")} == written


def summary_error(output_dir) -> str:
    """The one-line error of the one failed pair of ``output_dir/summary.json``."""
    (failed,) = [record for record in json.loads((output_dir / "summary.json").read_text())["pairs"] if record["status"] == "failed"]
    return failed["error"]


def test_fcn_fine_tunes_on_each_pair_on_request():
    """Pair optimisation, the paper's second mode, on request: by default the refinement does that work, faster."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs/inference.json"))
    assert parser.get_parsed_content("inferer").iterations == 0
    parser["optimize_iterations"] = 5
    assert parser.get_parsed_content("inferer").iterations == 5


@pytest.mark.parametrize("bundle", [b for b in TRAINED_BUNDLES if refines_its_field(b)], indirect=True, ids=lambda path: path.name)
def test_no_refinement_gives_the_networks_feed_forward_field_exactly(bundle, pairs, tmp_path):
    """refine_iterations 0: the written field is the network's, pre-alignment folded in, unless the check found the
    pre-alignment better (FIRE's weak networks on this pair); quality.json says which stage it is."""
    from regplugins.bundles import inference_workflow
    from regplugins.layers import affine_to_ddf
    from regplugins.outputs import register_on_native_grids
    from regplugins.transforms import ComposeAffined

    pair = pairs[0]
    workflow = inference_workflow(
        bundle, fixed_image=pair["fixed"], moving_image=pair["moving"], output_dir=str(tmp_path), device="cpu", refine_iterations=0
    )
    workflow.run()  # loads the weights into the network
    folder = tmp_path / pair_output_name(pair["moving"], pair["fixed"])
    written, _ = load_itk_displacement_field(folder / "ddf.nii.gz")
    data = workflow.parser.get_parsed_content("dataset")[0]
    evaluator = workflow.parser.get_parsed_content("evaluator")  # the run's network, weights loaded, and inferer
    network, inferer = evaluator.network.eval(), evaluator.inferer
    with torch.no_grad():
        pred = inferer(data["image"][None].as_tensor(), network)[0, :3]  # FIRE stacks its inverse after the field
    matrix = data["prealign_matrix"]
    stages = {
        "network": ComposeAffined("pred")({"pred": pred, "prealign_matrix": matrix})["pred"],
        "prealignment": affine_to_ddf(torch.as_tensor(matrix)[None], pred.shape[1:])[0].float(),
    }
    quality = json.loads((folder / "quality.json").read_text())
    assert "refinement" not in quality["dissimilarity"]
    expected = register_on_native_grids(stages[quality["kept"]], data["fixed"].affine, pair["fixed"], pair["moving"])["ddf"]
    assert np.abs(written - expected).max() < 1e-4
    if not writes_inverse_field(bundle):  # the three bundles' shipped networks improve on their start here
        assert quality["kept"] == "network" and quality["dissimilarity"]["network"] <= quality["dissimilarity"]["prealignment"]


def test_a_broken_checkpoint_is_caught_and_its_field_not_written(pairs, tmp_path):
    """Weights corrupted by noise as large as themselves: the run says the network made the pair worse and keeps its start."""
    bundle = ROOT / "bundles" / "ct_mr_gradient_fusion_reg"
    generator = torch.Generator().manual_seed(0)
    state = torch.load(bundle / "models/model.pt", map_location="cpu")
    broken = {
        k: v + v.std() * torch.randn(v.shape, generator=generator) if k.endswith(("weight", "bias")) and v.numel() > 1 else v
        for k, v in state.items()
    }
    torch.save(broken, tmp_path / "broken.pt")
    pair = pairs[0]
    result = run_bundle(
        "--fixed_image",
        pair["fixed"],
        "--moving_image",
        pair["moving"],
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(tmp_path / "broken.pt"),
        "--refine_iterations",
        "0",
        "--device",
        "cpu",
        bundle=bundle,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    quality = json.loads((tmp_path / "out" / pair_output_name(pair["moving"], pair["fixed"]) / "quality.json").read_text())
    assert quality["kept"] in ("none", "prealignment"), quality
    assert quality["dissimilarity"]["network"] > quality["dissimilarity"][quality["kept"]]
    assert "the network left the images less similar" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle_name", ["fcn_multires_selfsup_reg", "ct_mr_gradient_fusion_reg"])
def test_shipped_weights_align_held_out_validation_pairs_better_than_no_field(bundle_name):
    """On the train config's first two validation pairs (seeds no training drew), the shipped network's field alone raises the Dice."""
    bundle = ROOT / "bundles" / bundle_name
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/train.json"))
    parser.update({"device": "cpu", "num_val_pairs": 2, "num_workers": 0})
    pairs, network = parser.get_parsed_content("validate#dataset"), parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models/model.pt", map_location="cpu"))
    network.eval()

    def dice(pair, ddf):
        warped = Warp(mode="nearest")(pair["moving_label"][None].float(), ddf)
        return mean_dice(warped[0, 0].numpy(), pair["fixed_label"][0].numpy())

    gains = []
    for pair in pairs:  # seeds 1,000,000 and 1,000,001
        image = pair["image"][None].as_tensor()
        with torch.no_grad():
            ddf = network(image)
        gains.append(dice(pair, ddf) - dice(pair, torch.zeros_like(ddf)))
    assert sum(gains) / len(gains) > 0.01, gains


@pytest.mark.parametrize("bundle_name", ["fcn_multires_selfsup_reg", "ct_mr_gradient_fusion_reg"])
def test_pair_optimization_mode_needs_no_weights(bundle_name):
    """The FCN paper's direct mode, which both deformable MIND bundles offer: a fresh network optimised on the pair alone lowers its loss."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle_name / "configs/inference.json"))
    parser["optimize_iterations"] = 15
    parser["device"] = "cpu"
    network, inferer, loss = parser.get_parsed_content("network"), parser.get_parsed_content("inferer"), parser.get_parsed_content("loss")
    generator = torch.Generator().manual_seed(0)
    pair = torch.nn.functional.avg_pool3d(torch.rand(1, 2, 32, 32, 32, generator=generator), 3, 1, 1)
    pair[:, 0] = torch.roll(pair[:, 1], shifts=1, dims=1)
    network.eval()
    with torch.no_grad():
        before = loss(network(pair), pair)
        field = inferer(pair, network)
        after = loss(field, pair)
    assert field.shape == (1, 3, 32, 32, 32)
    assert after < before
