"""The Bayesian-regularised regression ANN (Islam et al.): a fit of a known linear map, its effective number of
parameters, and the saved and traced model."""

from __future__ import annotations

import pytest
import torch

from regplugins.networks import BayesianRegularizedANN

NOISE = 0.5


@pytest.fixture(scope="module")
def linear_map():
    """20 redundant features (mixtures of 4 latent factors, as CNN features are, one constant) mapped linearly
    to 6 targets with noise; 300 samples to train on, 200 held out. The net is fitted once, for 100 epochs."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.rand(500, 4, generator=generator) * 2 - 1
    features = latent @ torch.randn(4, 20, generator=generator) + 0.01 * torch.randn(500, 20, generator=generator)
    features[:, 0] = 7.0
    clean = features @ torch.randn(20, 6, generator=generator) + torch.tensor([10.0, -5, 0, 2, 30, -1])
    targets = clean + NOISE * torch.randn(500, 6, generator=generator)
    torch.manual_seed(0)
    net = BayesianRegularizedANN(in_features=20, hidden_features=10, out_features=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrices are tiny: threads only contend on a shared CPU
    try:
        history = net.fit(features[:300], targets[:300], epochs=100)
    finally:
        torch.set_num_threads(threads)
    return net, history, features[:300], (features[300:], targets[300:], clean[300:])


def test_fit_predicts_held_out_samples(linear_map):
    net, _, _, (features, targets, clean) = linear_map
    with torch.no_grad():
        predicted = net(features)
    assert predicted.dtype == torch.float32 and all(p.dtype == torch.float32 for p in net.parameters())
    rms = (predicted - targets).pow(2).mean().sqrt()
    assert rms < 1.3 * NOISE  # the noise is all that is left
    assert (predicted - clean).pow(2).mean().sqrt() < 0.05 * targets.std(dim=0).mean()  # the map itself


def test_inputs_are_mapped_to_unit_range_and_a_constant_one_to_zero(linear_map):
    net, _, train_features, _ = linear_map
    normalized = (train_features - net.input_center) / net.input_scale
    low, high = normalized[:, 1:].aminmax(dim=0)
    assert torch.allclose(low, -torch.ones(19)) and torch.allclose(high, torch.ones(19))
    assert torch.all(normalized[:, 0] == 0)


def test_effective_number_of_parameters_is_well_below_the_total(linear_map):
    net, history, _, _ = linear_map
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 20 * 10 + 10 + 10 * 6 + 6
    assert history["stop"] == "epochs"
    assert all(len(history[key]) == 100 for key in ("sse", "ssw", "gamma", "alpha", "beta", "mu"))
    gamma = history["gamma"][-1]
    assert 10 < gamma < 0.6 * n_params
    # MacKay's re-estimates of alpha and beta from gamma, E_W and E_D
    assert history["alpha"][-1] == pytest.approx(gamma / (2 * history["ssw"][-1]))
    assert history["beta"][-1] == pytest.approx((300 * 6 - gamma) / (2 * history["sse"][-1]))


def test_state_dict_round_trip_and_trace_predict_the_same(linear_map, tmp_path):
    net, _, _, (features, _, _) = linear_map
    torch.save(net.state_dict(), tmp_path / "model.pt")
    loaded = BayesianRegularizedANN(in_features=20, hidden_features=10, out_features=6)
    loaded.load_state_dict(torch.load(tmp_path / "model.pt"))
    traced = torch.jit.trace(net, features[:2])
    with torch.no_grad():
        expected = net(features)
        assert torch.equal(loaded(features), expected)
        assert torch.equal(traced(features), expected)
