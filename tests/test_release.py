"""`regplugins release`: a zip that `monai.bundle download` installs and that registers from where it lands."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from monai.bundle import download

from regplugins.inferers import ForwardInverseInferer, PairOptimizationInferer
from regplugins.io import load_itk_displacement_field, pair_output_name
from regplugins.release import build_release

from conftest import BUNDLE, BUNDLES, ROOT, TRAINED_BUNDLES, read_datalist, run_bundle, writes_inverse_field


@pytest.fixture(scope="module", params=TRAINED_BUNDLES, ids=lambda path: path.name)
def release(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    return request.param, build_release(request.param, out, repo="owner/repo/v1"), out


def test_release_zip_holds_the_bundle_and_its_torchscript_export(release):
    bundle, zip_path, out = release
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    name = f"{bundle.name}_v{meta['version']}"
    assert zip_path.name == f"{name}.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    for member in ("LICENSE", "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt", "models/model.ts"):
        assert f"{bundle.name}/{member}" in names
    index = json.loads((out / "model_info.json").read_text())
    assert index[name]["checksum"] == hashlib.md5(zip_path.read_bytes()).hexdigest()
    assert index[name]["source"] == f"https://github.com/owner/repo/releases/download/v1/{name}.zip"


@pytest.mark.slow
def test_downloaded_release_registers_with_model_pt_and_model_ts_alike(release, synthetic_pairs, tmp_path):
    bundle, zip_path, _ = release
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    # in-process: the same code as `python -m monai.bundle download`, without a second interpreter's MONAI import (8 s)
    download(name=bundle.name, url=zip_path.as_uri(), bundle_dir=str(bundles))
    downloaded = bundles / bundle.name
    entry = read_datalist(synthetic_pairs)[0]
    fixed, moving = str(synthetic_pairs.parent / entry["fixed"]), str(synthetic_pairs.parent / entry["moving"])
    fields, written = [], []
    for weights in ("model.pt", "model.ts"):
        out = tmp_path / weights
        # the networks alone with either export: pair optimisation (the fcn bundle's option) needs model.pt, and a
        # refinement on the pair would magnify the exports' rounding differences (the rigid one samples at random);
        # in float32, since bfloat16 (the default on CPUs with AVX-512 BF16) rounds the traced and the eager graph apart
        result = run_bundle(
            "--fixed_image",
            fixed,
            "--moving_image",
            moving,
            "--output_dir",
            str(out),
            "--device",
            "cpu",
            "--ckpt_path",
            str(downloaded / "models" / weights),
            "--optimize_iterations",
            "0",
            "--refine_iterations",
            "0",
            "--refine",
            "false",
            "--mixed_precision",
            "False",
            bundle=downloaded,
        )
        if weights == "model.ts" and writes_inverse_field(bundle):
            # the export holds network_def's forward field alone, not the inverse that FIRE's inference writes
            assert result.returncode != 0 and "not models/model.ts" in result.stderr, result.stderr[-3000:]
            assert not list(out.rglob("*.nii.gz"))  # and no partial output
            break
        assert result.returncode == 0, result.stderr[-3000:]
        folder = out / pair_output_name(moving, fixed)
        written.append(sorted(p.name for p in folder.iterdir()))
        fields.append(load_itk_displacement_field(folder / "ddf.nii.gz")[0])
    assert {"ddf.nii.gz", "warped.nii.gz"} <= set(written[0])
    assert np.abs(fields[0]).max() > 1.0  # a real registration, not the identity
    if len(fields) == 2:  # both exports registered: the same files (rigid.tfm, rigid.json too) and the same field
        assert written[1] == written[0]
        np.testing.assert_allclose(fields[1], fields[0], atol=1e-3)


def test_release_refuses_a_bundle_without_weights_or_with_a_stale_regplugins_pin(tmp_path):
    untrained = shutil.copytree(BUNDLE, tmp_path / "untrained", ignore=shutil.ignore_patterns("models"))
    with pytest.raises(ValueError, match="no trained weights in models/model.pt"):
        build_release(untrained, tmp_path / "out")
    stale = shutil.copytree(BUNDLE, tmp_path / "stale")
    meta_file = stale / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["required_packages_version"]["regplugins"] = "0.0.1"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="names regplugins 0.0.1"):
        build_release(stale, tmp_path / "out")
    with pytest.raises(ValueError, match="OWNER/REPO/TAG"):
        build_release(BUNDLE, tmp_path / "out", repo="owner/repo")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "inferer",
    [ForwardInverseInferer(), PairOptimizationInferer(loss=lambda fields, inputs: fields.mean(), iterations=2)],
    ids=["forward_inverse", "pair_optimisation"],
)
def test_inferers_that_need_more_than_the_forward_field_refuse_a_torchscript_network(inferer):
    traced = torch.jit.trace(torch.nn.Conv3d(2, 3, 3, padding=1).eval(), torch.rand(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="model.pt"):
        inferer(torch.rand(1, 2, 8, 8, 8), traced)


SHARED = ROOT / "bundles" / "_shared"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_every_bundle_holds_the_shared_files_and_keys_as_their_one_source_does(bundle):
    """Copies kept by hand drift (the fcn train config once missed the shared pair cache); bundles/_shared is the source."""
    for source in [SHARED / "LICENSE", *sorted((SHARED / "configs").glob("*"))]:
        if source.name == "inference_common.json":
            continue
        copy = bundle / source.relative_to(SHARED)
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: copy it over"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    for key, value in json.loads((SHARED / "configs" / "inference_common.json").read_text()).items():
        assert inference.get(key) == value, f"{bundle.name}/configs/inference.json: {key} differs from bundles/_shared"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_the_cards_links_stay_inside_the_bundle_and_its_metadata_gives_the_cards_numbers(bundle):
    """A release zip holds the bundle folder alone: a relative link out of it is dead there."""
    import re

    card = (bundle / "docs" / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)", card):
        if not target.startswith(("http://", "https://")):
            resolved = (bundle / "docs" / target).resolve()
            assert resolved.is_relative_to(bundle.resolve()) and resolved.exists(), f"{bundle.name} card: {target}"
    metrics = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    rows = {kind: line for line in card.splitlines() for kind in re.findall(r"\(`([a-z0-9_]+)`\)", line)}
    for key, value in metrics.items():
        name, kind = re.match(r"mean_(dice|field_error_mm|rotation_error_deg|translation_error_mm)_(.+)", key).groups()
        cell = {
            "dice": f"{value:.3f} (",
            "field_error_mm": f"({value:.2f} mm)",
            # three decimals: the rigid finish and ANTs Rigid differ by hundredths
            "rotation_error_deg": f"{value:.3f}°",
            "translation_error_mm": f"{value:.3f} mm",
        }[name]
        assert cell in rows[kind], f"{bundle.name}: {key} {value} is not the card's {kind} row"
