"""The train configs' datasets: synthetic pairs dealt over modality pairs, augmented copies, a user's paired data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Lambdad

from regplugins.data import SynthesizePaird, augmented_pairs, ct_mr_pairs, synthetic_pairs, user_pairs
from regplugins.io import save_nifti
from regplugins.transforms import RandRigidMotiond

SMALL = {"shape": (12, 12, 12), "spacing": 8.0}


def test_synthetic_pairs_deal_the_seeds_over_the_modality_pairs_in_turn():
    dataset = synthetic_pairs(5, [["ct", "t1"], ["ct", "t2"]], SMALL, first_seed=10)
    pairs = [dataset[i] for i in range(len(dataset))]
    assert [(p["moving_modality"], p["fixed_modality"]) for p in pairs] == [("ct", "t1")] * 3 + [("ct", "t2")] * 2
    for pair, seed in zip(pairs, [10, 12, 14, 11, 13]):  # one modality pair after the other
        alone = SynthesizePaird(modalities=[pair["moving_modality"], pair["fixed_modality"]], **SMALL)({"seed": seed})
        assert torch.equal(torch.as_tensor(pair["moving"]), torch.as_tensor(alone["moving"]))


def test_synthetic_pairs_deal_each_modality_pair_over_the_anatomies_and_keep_one_anatomys_seeds():
    grid = {"shape": (24, 24, 24), "spacing": 8.0}
    mixed = synthetic_pairs(4, [["t2", "t1"]], grid, first_seed=10, anatomies=["generated", "mni152"])
    generated = synthetic_pairs(4, [["t2", "t1"]], grid, first_seed=10)
    assert torch.equal(torch.as_tensor(mixed[0]["moving"]), torch.as_tensor(generated[0]["moving"]))  # seed 10
    mni152 = SynthesizePaird(modalities=["t2", "t1"], anatomy="mni152", subject_deformation_mm=4.0, **grid)({"seed": 11})
    assert torch.equal(torch.as_tensor(mixed[2]["fixed_label"]), torch.as_tensor(mni152["fixed_label"]))  # seeds 10, 12, then 11
    assert not torch.equal(torch.as_tensor(mixed[2]["fixed_label"]), torch.as_tensor(generated[1]["fixed_label"]))
    with pytest.raises(ValueError, match="anatomies must name"):
        synthetic_pairs(2, [["t2", "t1"]], grid, anatomies=["atlas"])


def test_synthetic_pairs_run_the_transforms_after_the_synthesis():
    dataset = synthetic_pairs(2, [["ct", "t1"]], SMALL, transforms=[Lambdad("moving", lambda image: image * 0.0)])
    assert all(float(dataset[i]["moving"].abs().max()) == 0.0 for i in range(2))
    assert float(dataset[0]["fixed"].abs().max()) > 0.0


def test_no_modality_pair_is_one_clear_error():
    with pytest.raises(ValueError, match="at least one pair of modalities"):
        synthetic_pairs(2, [], SMALL)


def test_augmented_pairs_keep_each_head_and_move_each_copy_by_its_own_seed():
    motion = RandRigidMotiond(keys="moving", fixed_key="fixed", parameters_key="label", seed_key="motion_seed")
    dataset = augmented_pairs(
        2,
        [["ct", "t1"]],
        {**SMALL, "rotation_deg": 0.0, "translation_mm": 0.0, "deformation_mm": 0.0, "moving_grid": "same"},
        preprocessing=[],
        augmentation=[motion],
        copies=3,
    )
    assert len(dataset) == 6
    assert [dataset[i]["motion_seed"] for i in range(6)] == [0, 1, 2, 1000, 1001, 1002]
    motions = [dataset[i]["label"] for i in range(3)]
    assert torch.equal(torch.as_tensor(dataset[1]["label"]), torch.as_tensor(motions[1]))  # the same motion at every access
    assert not torch.equal(torch.as_tensor(motions[0]), torch.as_tensor(motions[1]))
    assert torch.equal(torch.as_tensor(dataset[0]["fixed"]), torch.as_tensor(dataset[2]["fixed"]))  # copies of one head


def test_user_pairs_stack_a_paired_datalist_on_the_cts_grid_at_the_working_spacing(tmp_path):
    rng = np.random.default_rng(0)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])  # an LAS CT; the MR images on a finer grid of their own
    files = {"ct": (rng.uniform(-1000, 1000, (20, 20, 20)), 2.0 * flipped), "mr": (rng.random((30, 30, 30)) * 500, np.diag([1.5] * 3 + [1]))}
    files["paired_ct"], files["paired_mr"] = (files["ct"][0], files["mr"][1]), (files["mr"][0], files["ct"][1])
    for key, (data, affine) in files.items():
        save_nifti(tmp_path / f"{key}.nii.gz", data, affine)
    (tmp_path / "paired.json").write_text(json.dumps([{key: f"{key}.nii.gz" for key in files}]), encoding="utf-8")
    marked = Lambdad("image", lambda image: image * 0.0 + 1.0)
    pair = user_pairs(str(tmp_path / "paired.json"), working_spacing=4.0)[0]
    assert pair["image"].shape == (4, 10, 10, 10) and pair["fixed_modality"] == "ct"
    assert np.allclose(pair["image"].affine[:3, :3], np.diag([4.0] * 3)), "the CT's grid, turned to RAS, at 4 mm"
    assert 0.0 <= float(pair["image"].min()) and float(pair["image"].max()) <= 1.0  # normalised per modality
    assert float(user_pairs(str(tmp_path / "paired.json"), 4.0, transforms=[marked])[0]["image"].min()) == 1.0
    # the dual-similarity bundle's sets: the user's pairs where a datalist is named, else synthetic ones
    chosen = ct_mr_pairs(str(tmp_path / "paired.json"), 4.0, [marked], num_pairs=3, modality_pairs=[["ct", "t1"]], synthesis_args=SMALL)
    assert len(chosen) == 1 and float(chosen[0]["image"].min()) == 1.0
    synthetic = ct_mr_pairs("", 4.0, [marked], num_pairs=3, modality_pairs=[["ct", "t1"]], synthesis_args=SMALL, first_seed=7)
    assert len(synthetic) == 3 and torch.equal(
        torch.as_tensor(synthetic[0]["moving"]), torch.as_tensor(synthetic_pairs(1, [["ct", "t1"]], SMALL, first_seed=7)[0]["moving"])
    )
