"""Training configs: one tiny epoch single-process, and one under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.handlers import CheckpointLoader

from conftest import BUNDLE, BUNDLES, ROOT, TINY, run_bundle


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_train_config_runs_and_saves_a_checkpoint_the_inference_network_loads(bundle, tmp_path):
    result = run_bundle(*TINY, "--ckpt_dir", str(tmp_path), config="train.json", bundle=bundle)
    assert result.returncode == 0, result.stderr[-3000:]
    train = ConfigParser()
    train.read_config(str(bundle / "configs/train.json"))
    log = result.stdout + result.stderr
    assert "train_loss: " in log  # every iteration's loss in the log: a scalar to StatsHandler, not a tuple it ignores
    for key_metric in train["validate"]["key_metric"]:  # the validation ran and scored
        assert f"{key_metric}:" in log
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    parser["device"] = "cpu"
    parser.get_parsed_content("network_def").load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_pretrained_weights_are_loaded_before_the_first_iteration(bundle, tmp_path):
    """``pretrained_weights`` fine-tunes from a checkpoint (on a user's data, or a run continued); empty, it trains from scratch."""

    def parsed(pretrained_weights):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs/train.json"))
        parser.update(
            {
                "working_shape": [32, 32, 32],
                "working_spacing": 6.0,
                "num_train_pairs": 2,
                "num_val_pairs": 1,
                "num_workers": 0,
                "device": "cpu",
                "pretrained_weights": pretrained_weights,
            }
        )
        return parser

    from_scratch = parsed("")
    assert not any(isinstance(handler, CheckpointLoader) for handler in from_scratch.get_parsed_content("train#handlers"))
    checkpoint = from_scratch.get_parsed_content("network_def")
    with torch.no_grad():
        for parameter in checkpoint.parameters():
            parameter.uniform_(-1.0, 1.0)
    torch.save(checkpoint.state_dict(), tmp_path / "checkpoint.pt")

    fine_tune = parsed(str(tmp_path / "checkpoint.pt"))
    trainer, network = fine_tune.get_parsed_content("train#trainer"), fine_tune.get_parsed_content("network")
    expected = checkpoint.state_dict()
    assert not all(torch.equal(value, expected[key]) for key, value in network.state_dict().items())
    trainer.fire_event(Events.STARTED)
    assert all(torch.equal(value, expected[key]) for key, value in network.state_dict().items())


@pytest.mark.parametrize("name", ["fcn_multires_selfsup_reg", "ct_mr_gradient_fusion_reg"])
def test_validation_warps_the_labels_at_the_synthesis_grid(name):
    """Both bundles synthesise at twice the working resolution; their validation scores the labels there, not resampled to the working grid."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / name / "configs/train.json"))
    parser.update({"working_shape": [16, 16, 16], "working_spacing": 6.0, "num_val_pairs": 1, "num_workers": 0, "device": "cpu"})
    pair = parser.get_parsed_content("validate#dataset")[0]
    assert pair["image"].shape[1:] == (16, 16, 16) and pair["moving_label_full"].shape[1:] == (32, 32, 32)
    shift = torch.zeros(3, 16, 16, 16)
    shift[0] = 1.0  # one 6 mm working voxel: two synthesis voxels
    scored = parser.get_parsed_content("validate#postprocessing")({**pair, "pred": shift})
    warped = scored["moving_label_full_warped"].argmax(0)
    assert scored["fixed_label_onehot"].shape == (parser["num_labels"], 32, 32, 32)
    assert torch.equal(warped[:30], pair["moving_label_full"][0, 2:].long())


def test_fire_trains_on_the_anatomies_its_config_names():
    """``anatomies`` deals FIRE's training seeds over generated heads and MNI152 subjects (labels 0-5), after its pre-alignment."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles/fire_inverse_consistent_reg/configs/train.json"))
    parser.update(
        {"working_shape": [24, 24, 24], "working_spacing": 8.0, "num_train_pairs": 2, "num_workers": 0, "anatomies": ["generated", "mni152"]}
    )
    train = parser.get_parsed_content("train#dataset")
    generated, mni152 = (int(torch.as_tensor(train[i]["fixed_label"]).max()) for i in range(2))
    assert mni152 <= 5 < generated


@pytest.mark.parametrize("name", ["ct_mr_gradient_fusion_reg", "ct_mr_dual_similarity_reg", "fire_inverse_consistent_reg"])
def test_synthesised_pairs_cached_on_disk_equal_the_in_memory_ones(name, tmp_path):
    """``cache_dir`` lets several runs share one synthesis; a cached pair must be the pair itself, its grids too (validation warps through them)."""

    def datasets(cache_dir):
        parser = ConfigParser()
        parser.read_config(str(ROOT / "bundles" / name / "configs/train.json"))
        parser.update(
            {
                "working_shape": [16, 16, 16],
                "working_spacing": 8.0,
                "num_train_pairs": 3,
                "num_val_pairs": 1,
                "num_workers": 0,
                "cache_dir": cache_dir,
            }
        )
        return parser.get_parsed_content("validate#dataset"), parser.get_parsed_content("train#dataset")

    in_memory, _ = datasets(None)
    on_disk, train_on_disk = datasets(str(tmp_path))
    written, read_back = on_disk[0], on_disk[0]
    for key, value in in_memory[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(torch.as_tensor(written[key]), torch.as_tensor(value)), key
            assert torch.equal(torch.as_tensor(read_back[key]), torch.as_tensor(value)), key
        if isinstance(value, MetaTensor):
            assert torch.equal(read_back[key].affine, value.affine), key
    for _ in train_on_disk:
        pass
    assert len(list(tmp_path.glob("*.pt"))) == 3 + 1


@pytest.mark.slow
def test_multi_gpu_train_runs_under_torchrun_with_gloo(tmp_path):
    configs = json.dumps([str(BUNDLE / "configs/train.json"), str(BUNDLE / "configs/multi_gpu_train.json")])
    tiny = list(TINY)
    del tiny[tiny.index("--device") : tiny.index("--device") + 2]  # each rank takes its own device
    result = run_bundle(*tiny, "--ckpt_dir", str(tmp_path), config=configs, processes=2, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.pt").exists()


def test_autocast_inferer_trains_in_bfloat16_on_the_cpu_with_float32_outputs():
    from regplugins.inferers import AutocastInferer
    from regplugins.networks import MultiResolutionFCN

    torch.manual_seed(0)
    network = MultiResolutionFCN().train()
    pair = torch.rand(1, 2, 16, 16, 16)
    inner_dtypes = []
    network.conv1.register_forward_hook(lambda module, inputs, output: inner_dtypes.append(output.dtype))
    fields = AutocastInferer()(pair, network)
    assert inner_dtypes == [torch.bfloat16]  # the convolutions ran in bfloat16 ...
    assert [f.dtype for f in fields] == [torch.float32] * 3  # ... and the fields come back in float32
    reference = network(pair)
    # the same fields as in float32, to bfloat16's precision (8 bits of mantissa, through five layers)
    assert all((f - r).abs().max() < 0.05 * r.abs().max() for f, r in zip(fields, reference))
    sum(f.square().sum() for f in fields).backward()  # gradients reach the float32 weights
    assert network.heads[0].weight.grad is not None and network.heads[0].weight.grad.dtype == torch.float32
    assert AutocastInferer(enabled=False)(pair, network.eval()).dtype == torch.float32


def test_pair_optimization_in_bfloat16_lowers_the_loss_and_returns_float32():
    from regplugins.inferers import PairOptimizationInferer
    from regplugins.losses import MINDLoss, MultiResolutionRegistrationLoss, TotalVariationLoss
    from regplugins.networks import MultiResolutionFCN

    torch.manual_seed(0)
    network = MultiResolutionFCN().eval()
    pair = torch.nn.functional.avg_pool3d(torch.rand(1, 2, 16, 16, 16), 3, 1, 1)
    pair[:, 0] = torch.roll(pair[:, 1], shifts=1, dims=1)
    loss = MultiResolutionRegistrationLoss(MINDLoss(), TotalVariationLoss(), regularizer_weight=0.02)
    inner_dtypes = []
    network.conv1.register_forward_hook(lambda module, inputs, output: inner_dtypes.append(output.dtype))
    field = PairOptimizationInferer(loss=loss, iterations=5, mixed_precision=True)(pair, network)
    assert set(inner_dtypes) == {torch.bfloat16} and len(inner_dtypes) == 6  # five steps and the answer, all in bfloat16
    assert field.dtype == torch.float32 and field.shape == (1, 3, 16, 16, 16)
    with torch.no_grad():
        assert loss(field, pair) < loss(network(pair), pair)


def test_bfloat16_is_not_chosen_for_an_absent_gpu_or_a_device_that_computes_nothing():
    from regplugins.inferers import bfloat16_is_fast

    assert bfloat16_is_fast("meta") is False
    if not torch.cuda.is_available():
        assert bfloat16_is_fast("cuda") is False


def test_the_old_spelling_of_a_renamed_setting_stops_the_run_and_names_the_new_one():
    """Read with a warning in regplugins 0.5.0; since 0.6.0 an error, not a setting silently ignored."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "fcn_multires_selfsup_reg" / "configs" / "inference.json"))
    parser.update({"device": "cpu", "optimise_iterations": 3})
    with pytest.raises(SystemExit, match="error: optimise_iterations: renamed optimize_iterations in regplugins 0.5.0"):
        parser.get_parsed_content("inferer")
    parser.update({"optimise_iterations": None, "optimize_iterations": 4})
    assert parser.get_parsed_content("inferer", lazy=False).iterations == 4
