"""The MONAI Label app: a real server on 127.0.0.1 answering infer requests over HTTP with a trained bundle."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from requests_toolbelt.multipart.decoder import MultipartDecoder

from regplugins.demo import labels_on_fixed_grid, mean_dice

from conftest import ROOT, TRAINED_BUNDLES, read_datalist

APP = ROOT / "apps" / "monailabel_registration"

# every test here runs a bundle in a real server
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(synthetic_pairs, tmp_path_factory):
    """The app on a datastore of two tiny synthetic volumes, the moving one with its labels as final labels."""
    entry = read_datalist(synthetic_pairs)[0]
    folder = synthetic_pairs.parent
    studies = tmp_path_factory.mktemp("studies")
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.copy(folder / entry["fixed"], studies / "fixed_t1.nii.gz")
    shutil.copy(folder / entry["moving"], studies / "moving_ct.nii.gz")
    shutil.copy(folder / entry["moving_label"], studies / "labels" / "final" / "moving_ct.nii.gz")
    app = shutil.copytree(APP, tmp_path_factory.mktemp("app") / "app", ignore=shutil.ignore_patterns("atlas", "__pycache__"))
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monailabel.main",
            "start_server",
            "--app",
            str(app),
            "--studies",
            str(studies),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--conf",
            "device",
            "cpu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=str(tmp_path_factory.mktemp("cwd")),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, open(log.name).read()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the MONAI Label server did not answer within 2 minutes:\n" + open(log.name).read()[-3000:])
        yield {"url": url, "studies": studies, "entry": entry, "folder": folder}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _infer(server, bundle: str, params: dict) -> tuple[dict, bytes]:
    response = requests.post(
        f"{server['url']}/infer/{bundle}", params={"image": "fixed_t1", "output": "all"}, files={"params": (None, json.dumps(params))}, timeout=600
    )
    assert response.status_code == 200, response.text[-2000:]
    parts = {
        part.headers[b"Content-Disposition"].split(b'name="')[1].split(b'"')[0].decode(): part.content
        for part in MultipartDecoder.from_response(response).parts
    }
    return json.loads(parts["params"]), parts["image"]


def test_the_network_is_kept_between_requests_and_the_field_downloads_as_a_transform(server, tmp_path):
    from regplugins.io import load_itk_displacement_field

    bundle = TRAINED_BUNDLES[0].name  # the first request to it: this test runs before the others that infer
    first, _ = _infer(server, bundle, {"moving": "moving_ct"})
    second, _ = _infer(server, bundle, {"moving": "moving_ct"})
    assert (first["network_kept"], second["network_kept"]) == (False, True)
    response = requests.get(f"{server['url']}{second['ddf_url']}", timeout=60)
    assert response.status_code == 200
    (tmp_path / "ddf.nii.gz").write_bytes(response.content)
    downloaded, affine = load_itk_displacement_field(tmp_path / "ddf.nii.gz")
    kept, kept_affine = load_itk_displacement_field(second["ddf"])
    assert np.array_equal(downloaded, kept) and np.allclose(affine, kept_affine)
    assert np.allclose(affine, nib.load(str(server["studies"] / "fixed_t1.nii.gz")).affine, atol=1e-4)


def test_app_lists_every_trained_bundle_as_an_infer_task(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert sorted(info["models"]) == sorted(bundle.name for bundle in TRAINED_BUNDLES)
    for task in info["models"].values():
        assert task["type"] == "segmentation"
        assert "skull" in task["labels"]  # the generated atlas's names


@pytest.mark.parametrize("bundle", [bundle.name for bundle in TRAINED_BUNDLES])
def test_infer_returns_the_moving_labels_warped_onto_the_open_image(server, bundle, tmp_path):
    result, label_bytes = _infer(server, bundle, {"moving": "moving_ct"})
    returned = tmp_path / "label.nii.gz"
    returned.write_bytes(label_bytes)
    label = nib.load(str(returned))
    fixed = nib.load(str(server["studies"] / "fixed_t1.nii.gz"))
    assert label.shape == fixed.shape
    assert np.allclose(label.affine, fixed.affine, atol=1e-4)
    values = np.unique(np.asanyarray(label.dataobj))
    assert result["label_names"] and set(result["label_names"].values()) >= {int(v) for v in values if v > 0}
    entry, folder = server["entry"], server["folder"]
    truth = np.asanyarray(nib.load(str(folder / entry["fixed_label"])).dataobj)
    pair = {"fixed_label": str(folder / entry["fixed_label"]), "moving_label": str(folder / entry["moving_label"])}
    before = mean_dice(labels_on_fixed_grid(pair), truth)
    after = mean_dice(np.asanyarray(label.dataobj), truth)
    assert after > before + 0.02, (before, after)
    # the warped image and the ITK displacement field are kept in the datastore's folder
    for kept in (result["warped_image"], result["ddf"]):
        assert os.path.exists(kept) and str(server["studies"]) in kept


def test_infer_without_a_moving_image_registers_the_atlas(server, tmp_path):
    result, label_bytes = _infer(server, TRAINED_BUNDLES[0].name, {})
    assert result["moving"] == "atlas" and "skull" in result["label_names"]
    returned = tmp_path / "label.nii.gz"
    returned.write_bytes(label_bytes)
    label = nib.load(str(returned))
    assert label.shape == nib.load(str(server["studies"] / "fixed_t1.nii.gz")).shape
    assert set(np.unique(np.asanyarray(label.dataobj)).astype(int)) - {0} <= set(result["label_names"].values())


def test_infer_names_a_moving_image_missing_from_the_datastore(server):
    response = requests.post(
        f"{server['url']}/infer/{TRAINED_BUNDLES[0].name}",
        params={"image": "fixed_t1", "output": "json"},
        files={"params": (None, json.dumps({"moving": "no_such_image"}))},
        timeout=120,
    )
    assert response.status_code == 400
    assert "no_such_image" in response.json()["detail"]


def test_info_offers_the_datastore_images_as_the_moving_choice(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    for task in info["models"].values():
        assert task["config"]["moving"] == ["atlas", "fixed_t1", "moving_ct"]
