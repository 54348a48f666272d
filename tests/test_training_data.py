"""The train configs' datasets: synthetic pairs dealt over modality pairs, augmented copies, a user's paired data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.transforms import Lambdad

from regplugins.data import SynthesizePaird, augmented_pairs, synthetic_pairs, user_pairs
from regplugins.transforms import RandRigidMotiond

SMALL = {"shape": (12, 12, 12), "spacing": 8.0}


def test_synthetic_pairs_deal_the_seeds_over_the_modality_pairs_in_turn():
    dataset = synthetic_pairs(5, [["ct", "t1"], ["ct", "t2"]], SMALL, first_seed=10)
    pairs = [dataset[i] for i in range(len(dataset))]
    assert [(p["moving_modality"], p["fixed_modality"]) for p in pairs] == [("ct", "t1")] * 3 + [("ct", "t2")] * 2
    for pair, seed in zip(pairs, [10, 12, 14, 11, 13]):  # one modality pair after the other
        alone = SynthesizePaird(modalities=[pair["moving_modality"], pair["fixed_modality"]], **SMALL)({"seed": seed})
        assert torch.equal(torch.as_tensor(pair["moving"]), torch.as_tensor(alone["moving"]))


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


def test_user_pairs_read_a_paired_datalist(tmp_path):
    files = {}
    for key in ("ct", "mr", "paired_ct", "paired_mr"):
        files[key] = f"{key}.txt"
        (tmp_path / files[key]).write_text(key)
    (tmp_path / "paired.json").write_text(json.dumps([files]))
    dataset = user_pairs(
        str(tmp_path / "paired.json"),
        lambda entry: {key: Path(path).read_text(encoding="utf-8") for key, path in entry.items() if key != "fixed_modality"},
    )
    assert dataset[0] == {"ct": "ct", "mr": "mr", "paired_ct": "paired_ct", "paired_mr": "paired_mr"}
