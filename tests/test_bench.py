"""`regplugins bench` end to end: a baseline and a bundle on the same tiny pairs, scored by the same code."""

from __future__ import annotations

import json

import numpy as np

from regplugins.bench import peak_resident_mb, bundle_and_overrides, run_bench
from regplugins.demo import labels_on_fixed_grid, mean_dice
from regplugins.inferers import bfloat16_is_fast
from regplugins.io import load_nifti, registration_pairs
from regplugins.metrics import read_rigid_matrix


def test_bench_scores_no_registration_and_a_bundle_and_its_variant(synthetic_pairs, pairs, tmp_path):
    # a variant with a config id ("#"), which MONAI would rewrite in an output folder named after it
    bundles = ["fcn_multires_selfsup_reg", "fcn_multires_selfsup_reg:prealign=none:loss#level_weights=[1.0,0.5,0.0]"]
    ballast = np.ones(200_000_000)  # 1.6 GB in this process, which no method's child may report as its own
    report = run_bench(bundles=bundles, data=str(synthetic_pairs), baselines=["none"], device="cpu", out=str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["methods"]) == ["none", *bundles]
    # the machine line says in which precision the bundles ran: their times differ twofold
    assert saved["machine"].endswith("bundles in bfloat16 by default" if bfloat16_is_fast("cpu") else "bundles in float32 by default")
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {method} |" in table for method in saved["methods"])
    # the override reached the bundle: without the pre-alignment it registers differently
    dice = [report["methods"][b]["summary"]["dice"]["mean"] for b in bundles]
    assert dice[0] != dice[1]

    # the no-registration row is the overlap of the moving labels taken to the fixed grid by world coordinates
    none = report["methods"]["none"]
    expected = [mean_dice(labels_on_fixed_grid(pair), load_nifti(pair["fixed_label"])[0]) for pair in pairs]
    assert np.isclose(none["summary"]["dice"]["mean"], np.mean(expected), atol=1e-6)
    assert none["summary"]["folding_percent"]["mean"] == 0.0
    for plot in ("dice_boxplot.png", "dice_vs_seconds.png", "overlay.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    for method in saved["methods"].values():
        assert method["timing"]["seconds_per_pair"] > 0
        assert 100 < method["timing"]["peak_memory_mb"] < peak_resident_mb() - ballast.nbytes / 2**20 / 2
        assert len(method["pairs"]) == 2
    for bundle in bundles:  # the network's own time is a part of the bundle's
        timing = saved["methods"][bundle]["timing"]
        assert 0 < timing["network_seconds_per_pair"] < timing["seconds_per_pair"]
    assert "network_seconds_per_pair" not in saved["methods"]["none"]["timing"]


def test_bundle_variants_parse_into_config_overrides():
    assert bundle_and_overrides("b") == ("b", {})
    assert bundle_and_overrides("b:fusion=average:working_spacing=[2,2,2]:network_def#variant=coarse") == (
        "b", {"fusion": "average", "working_spacing": [2, 2, 2], "network_def#variant": "coarse"}
    )


def test_rigid_set_scores_the_rotation_left_undone(tmp_path):
    report = run_bench(bundles=[], data="synth", kind="rigid", baselines=["none"], n=1, shape=(32, 32, 32), out=str(tmp_path))
    pair = registration_pairs(datalist=report["datalist"])[0]
    true_motion = read_rigid_matrix(pair["true_rigid"])
    true_angle = np.degrees(np.arccos((np.trace(true_motion[:3, :3]) - 1) / 2))
    scores = report["methods"]["none"]["pairs"][0]
    assert true_angle > 1.0 and np.isclose(scores["rotation_error_deg"], true_angle, atol=1e-3)
    assert scores["translation_error_mm"] > 0.5


def test_affine_set_of_mni152_heads_moves_the_moving_head_by_an_affine(tmp_path):
    report = run_bench(bundles=[], data="synth", kind="t1_t2_affine_mni152", baselines=["none"], n=1, shape=(48, 48, 48), out=str(tmp_path))
    pair = registration_pairs(datalist=report["datalist"])[0]
    assert pair["moving"].endswith("_moving_t1.nii.gz") and pair["fixed"].endswith("_fixed_t2.nii.gz")
    scores = report["methods"]["none"]["pairs"][0]
    # up to 10 degrees, 10 mm and 10 % scaling: millimetres of motion the unregistered pair keeps
    assert scores["field_error_mm"] > 2.0 and scores["dice"] < 0.9
