"""modify.HyperNetwork: per-sample parameters, checked against a hand-written hypernetwork."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

import modify
from tests.helpers import assert_close


def test_functional_call_with_predicted_weights_equals_f_linear(gen):
    """torchhyper's check, per sample: output and hypernetwork gradient equal a manual F.linear."""
    target = modify.Linear(3, 2)
    hyper = modify.HyperNetwork(4, [8], target)
    with torch.no_grad():  # move off the zero-initialised head so every parameter matters
        hyper.head.weight.normal_(generator=gen)
    z, x = torch.randn(5, 4, generator=gen), torch.randn(5, 7, 3, generator=gen)

    params = hyper(z)
    got = torch.func.vmap(lambda p, x: modify.functional_call(target, p, x))(params, x)
    got.square().sum().backward()
    grads = [p.grad.clone() for p in hyper.parameters()]

    w1, b1 = hyper.body[0].weight, hyper.body[0].bias
    wh, bh = hyper.head.weight, hyper.head.bias
    flat = F.linear(torch.relu(F.linear(z, w1, b1)), wh, bh)  # (5, 2*3 + 2)
    weights, biases = flat[:, :6].reshape(5, 2, 3), flat[:, 6:]
    expected = torch.stack([F.linear(x[i], weights[i], biases[i]) for i in range(5)])
    assert_close(got, expected)
    reference = torch.autograd.grad(expected.square().sum(), [w1, b1, wh, bh])
    for g, r in zip(grads, reference):
        assert_close(g, r, atol=1e-5)


def test_names_shapes_and_batching():
    target = modify.Sequential(modify.Conv2d(2, 4, 3), modify.ReLU(), modify.Flatten(1), modify.Linear(4, 3))
    hyper = modify.HyperNetwork(6, (), target)
    single = hyper(torch.zeros(6))
    assert list(single) == [n for n, _ in target.named_parameters()]
    assert {k: v.shape for k, v in single.items()} == {k: p.shape for k, p in target.named_parameters()}
    batched = hyper(torch.zeros(3, 6))
    assert all(batched[k].shape == (3, *p.shape) for k, p in target.named_parameters())
    assert hyper.param_shapes == {k: p.shape for k, p in target.named_parameters()}
    assert len(hyper.body) == 0 and hyper.head.in_features == 6


def test_starts_by_predicting_the_targets_own_parameters(gen):
    target = modify.Sequential(modify.Linear(2, 5), modify.Tanh(), modify.Linear(5, 1))
    hyper = modify.HyperNetwork(3, [16, 16], target)
    for value in hyper(torch.randn(4, 3, generator=gen)).values():
        assert value.shape[0] == 4
    predicted = hyper(torch.randn(3, generator=gen))
    for name, p in target.named_parameters():
        assert torch.equal(predicted[name], p.detach())


def test_keeps_no_reference_to_the_target():
    target = modify.Linear(3, 3)
    ref = weakref.ref(target)
    hyper = modify.HyperNetwork(2, [4], target)
    assert all(m is not target for m in hyper.modules())
    del target
    gc.collect()
    assert ref() is None
    assert tuple(hyper(torch.zeros(2))["weight"].shape) == (3, 3)


def test_tied_parameters_are_predicted_once(gen):
    target = modify.Sequential(modify.Linear(3, 3, bias=False), modify.Tanh(), modify.Linear(3, 3, bias=False))
    target[2].weight = target[0].weight
    hyper = modify.HyperNetwork(2, [4], target)
    params = hyper(torch.randn(2, generator=gen))
    assert list(params) == ["0.weight"]
    x = torch.randn(4, 3, generator=gen)
    w = params["0.weight"]
    assert_close(modify.functional_call(target, params, x), torch.tanh(x @ w.T) @ w.T)


def test_bad_arguments_raise():
    target = modify.Linear(3, 3)
    hyper = modify.HyperNetwork(2, [4], target)
    with pytest.raises(ValueError, match=r"\(2,\) or \(B, 2\)"):
        hyper(torch.zeros(3))
    with pytest.raises(ValueError, match="got"):
        hyper(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="no parameters"):
        modify.HyperNetwork(2, [4], modify.ReLU())
    with pytest.raises(ValueError, match="positive"):
        modify.HyperNetwork(2, [0], target)
    with pytest.raises(TypeError):
        modify.HyperNetwork(2, 4, target)


def test_learns_per_sample_linear_maps(gen):
    """Each sample's slope is given as z; the predicted Linear(1, 1) must realise y = a * x."""
    target = modify.Linear(1, 1)
    hyper = modify.HyperNetwork(1, [16], target)
    opt = torch.optim.Adam(hyper.parameters(), lr=1e-2)
    run = torch.func.vmap(lambda p, x: modify.functional_call(target, p, x))
    losses = []
    for _ in range(150):
        a = torch.rand(32, 1, generator=gen) * 4 - 2
        x = torch.randn(32, 8, 1, generator=gen)
        loss = (run(hyper(a), x) - a[:, None] * x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.05 * sum(losses[:10])


def test_with_mutable_assignment_gradients_reach_the_hypernetwork(gen):
    target = modify.Sequential(modify.Linear(2, 3), modify.Tanh(), modify.Linear(3, 1))
    hyper = modify.HyperNetwork(2, [8], target)
    net = modify.mutable(target)
    for name, value in hyper(torch.randn(2, generator=gen)).items():
        layer, attr = name.split(".")
        setattr(net[int(layer)], attr, value)
    net(torch.randn(5, 2, generator=gen)).sum().backward()
    assert hyper.head.weight.grad is not None and hyper.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


def test_per_sample_lora_adapters_over_one_shared_base(gen):
    """params= predicts only the adapters; functional_call(strict=False) takes the base from the model."""
    base = modify.Linear(4, 3)
    adapted = modify.lora(base, rank=2, alpha=4.0)
    adapter_ids = {id(p) for p in modify.lora_parameters(adapted)}
    names = [n for n, p in adapted.named_parameters() if id(p) in adapter_ids]
    hyper = modify.HyperNetwork(5, [8], adapted, params=names)
    with torch.no_grad():
        hyper.head.weight.normal_(generator=gen)
    z, x = torch.randn(6, 5, generator=gen), torch.randn(6, 7, 4, generator=gen)
    params = hyper(z)
    assert list(params) == names == ["1.adapter.down.weight", "1.adapter.up.weight"]
    got = torch.func.vmap(lambda p, x: modify.functional_call(adapted, p, x, strict=False))(params, x)
    a, b = params["1.adapter.down.weight"], params["1.adapter.up.weight"]  # (6, 2, 4), (6, 3, 2)
    expected = base(x) + 2.0 * torch.einsum("bti,bri,bor->bto", x, a, b)
    assert_close(got, expected)
    grads = torch.autograd.grad(got.square().sum(), [hyper.head.weight, base.weight], retain_graph=True)
    reference = torch.autograd.grad(expected.square().sum(), [hyper.head.weight, base.weight])
    for g, r in zip(grads, reference):
        assert_close(g, r, atol=1e-4)
    with pytest.raises(ValueError, match="has no parameters"):
        modify.HyperNetwork(5, [8], adapted, params=["nope"])
    with pytest.raises(ValueError, match="no parameters to predict among"):
        modify.HyperNetwork(5, [8], adapted, params=[])
