"""modify.functional_call: strict substitution, checked against torch.func and F.* references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modify
from tests.helpers import assert_close, assert_state_equal, state_snapshot


def make_mlp() -> modify.Sequential:
    return modify.Sequential(modify.Linear(3, 5), modify.Tanh(), modify.Linear(5, 2))


def random_params(model: nn.Module, gen: torch.Generator, batch: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    return {k: torch.randn(*batch, *p.shape, generator=gen) for k, p in model.named_parameters()}


def manual_mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(F.linear(x, params["0.weight"], params["0.bias"]))
    return F.linear(h, params["2.weight"], params["2.bias"])


def test_output_and_gradient_match_references(gen):
    model = make_mlp()
    params = {k: v.requires_grad_() for k, v in random_params(model, gen).items()}
    x = torch.randn(4, 3, generator=gen)
    got = modify.functional_call(model, params, x)
    assert_close(got, manual_mlp(params, x))
    assert_close(got, torch.func.functional_call(model, params, (x,)))
    grads = torch.autograd.grad(got.square().sum(), list(params.values()))
    ref = torch.autograd.grad(manual_mlp(params, x).square().sum(), list(params.values()))
    for g, r in zip(grads, ref):
        assert_close(g, r)
    assert all(p.grad is None for p in model.parameters())


def test_model_is_unchanged_also_when_the_forward_raises(gen):
    model = make_mlp()
    state, ids = state_snapshot(model), [id(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="last dimension 3"):
        modify.functional_call(model, random_params(model, gen), torch.randn(2, 4))
    assert_state_equal(model, state)
    assert [id(p) for p in model.parameters()] == ids
    assert isinstance(model[0].weight, nn.Parameter)


def test_missing_unexpected_and_misshaped_names_are_listed(gen):
    model = make_mlp()
    params = random_params(model, gen)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"missing parameters '0\.bias', '2\.weight'"):
        modify.functional_call(model, {"0.weight": params["0.weight"], "2.bias": params["2.bias"]}, x)
    with pytest.raises(ValueError, match=r"no parameter or buffer '1\.weight', 'oops'"):
        modify.functional_call(model, {**params, "1.weight": torch.zeros(1), "oops": torch.zeros(1)}, x)
    bad = {**params, "0.weight": torch.zeros(3, 5), "2.bias": torch.zeros(1, 2)}
    with pytest.raises(ValueError, match=r"'0\.weight': expected \(5, 3\), got \(3, 5\); '2\.bias'.*vmap"):
        modify.functional_call(model, bad, x)


def test_bad_argument_types_raise_type_error(gen):
    model = make_mlp()
    params = random_params(model, gen)
    with pytest.raises(TypeError, match="dict"):
        modify.functional_call(model, list(params.items()), torch.zeros(1, 3))
    with pytest.raises(TypeError, match=r"params\['0\.bias'\] must be a tensor"):
        modify.functional_call(model, {**params, "0.bias": [0.0] * 5}, torch.zeros(1, 3))
    with pytest.raises(TypeError, match="must be a tensor"):
        modify.functional_call(model, {**params, "0.bias": None}, torch.zeros(1, 3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        modify.functional_call(lambda x: x, params, torch.zeros(1, 3))


def tied_model() -> modify.Sequential:
    model = modify.Sequential(modify.Linear(4, 4, bias=False), modify.Tanh(), modify.Linear(4, 4, bias=False))
    model[2].weight = model[0].weight
    return model


def test_tied_weights_one_name_is_enough(gen):
    model = tied_model()
    w = torch.randn(4, 4, generator=gen)
    x = torch.randn(2, 4, generator=gen)
    expected = torch.tanh(x @ w.T) @ w.T
    assert_close(modify.functional_call(model, {"0.weight": w}, x), expected)
    assert_close(modify.functional_call(model, {"2.weight": w}, x), expected)
    assert_close(modify.functional_call(model, {"0.weight": w, "2.weight": w}, x), expected)
    with pytest.raises(ValueError, match="tied parameters '0.weight', '2.weight' were given different tensors"):
        modify.functional_call(model, {"0.weight": w, "2.weight": w.clone()}, x)
    with pytest.raises(ValueError, match=r"missing parameters '0\.weight' "):
        modify.functional_call(model, {}, x)


def test_buffers_are_optional_and_substituted(gen):
    model = modify.Sequential(modify.Linear(3, 3), modify.BatchNorm1d(3)).eval()
    params = random_params(model, gen)
    mean, var = torch.randn(3, generator=gen), torch.rand(3, generator=gen) + 0.5
    x = torch.randn(5, 3, generator=gen)
    h = F.linear(x, params["0.weight"], params["0.bias"])
    assert_close(modify.functional_call(model, params, x), F.batch_norm(h, torch.zeros(3), torch.ones(3)))
    got = modify.functional_call(model, {**params, "1.running_mean": mean, "1.running_var": var}, x)
    assert_close(got, F.batch_norm(h, mean, var))
    with pytest.raises(ValueError, match="mis-shaped buffers"):
        modify.functional_call(model, {**params, "1.running_mean": torch.zeros(4)}, x)
    # training mode updates the given statistics, never the model's own
    model.train()
    state = state_snapshot(model)
    stats = {"1.running_mean": torch.zeros(3), "1.running_var": torch.ones(3), "1.num_batches_tracked": torch.tensor(0)}
    modify.functional_call(model, {**params, **stats}, x)
    assert_close(stats["1.running_mean"], 0.1 * h.mean(0))
    assert stats["1.num_batches_tracked"].item() == 1
    assert_state_equal(model, state)


def test_vmap_with_per_sample_parameters(gen):
    model = make_mlp()
    batched = random_params(model, gen, batch=(6,))
    xs = torch.randn(6, 2, 3, generator=gen)
    got = torch.func.vmap(lambda p, x: modify.functional_call(model, p, x))(batched, xs)
    expected = torch.stack([manual_mlp({k: v[i] for k, v in batched.items()}, xs[i]) for i in range(6)])
    assert_close(got, expected)
    # shared parameters, batched inputs
    shared = random_params(model, gen)
    got = torch.func.vmap(lambda x: modify.functional_call(model, shared, x))(xs)
    assert_close(got, manual_mlp(shared, xs))
    # without vmap, batched parameters are mis-shaped
    with pytest.raises(ValueError, match="vmap"):
        modify.functional_call(model, batched, xs[0])


def test_per_sample_gradients_with_torch_func(gen):
    model = make_mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs, ys = torch.randn(5, 3, generator=gen), torch.randn(5, 2, generator=gen)

    def loss(p, x, y):
        return (modify.functional_call(model, p, x[None]) - y[None]).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    for i in range(5):
        model.zero_grad()
        (model(xs[i : i + 1]) - ys[i : i + 1]).square().sum().backward()
        for name, p in model.named_parameters():
            assert_close(per_sample[name][i], p.grad)


def test_plain_torch_module_and_tuple_inputs(gen):
    lin = nn.Linear(3, 2)
    params = {"weight": torch.randn(2, 3, generator=gen), "bias": torch.randn(2, generator=gen)}
    x = torch.randn(4, 3, generator=gen)
    assert_close(modify.functional_call(lin, params, x), F.linear(x, params["weight"], params["bias"]))
    pair = modify.Parallel(modify.Linear(3, 2), modify.Identity())
    p = {"0.weight": params["weight"], "0.bias": params["bias"]}
    a, b = modify.functional_call(pair, p, (x, x))
    assert_close(a, F.linear(x, params["weight"], params["bias"]))
    assert b is x


def test_one_error_lists_every_kind_of_problem(gen):
    model = modify.Sequential(modify.Linear(3, 2), modify.ReLU(), modify.Linear(2, 2))
    params = {"0.weight": torch.zeros(3, 3), "2.weight": torch.zeros(2, 2), "oops": torch.zeros(1)}
    with pytest.raises(ValueError) as error:
        modify.functional_call(model, params, torch.zeros(1, 3))
    message = str(error.value)
    assert "mis-shaped parameters '0.weight': expected (2, 3), got (3, 3)" in message
    assert "no parameter or buffer 'oops'" in message
    assert "missing parameters '0.bias', '2.bias'" in message


def test_a_module_at_two_paths_keeps_its_own_parameters(gen):
    lin = modify.Linear(4, 4)
    model = modify.Sequential(lin, modify.ReLU(), lin)
    weight, bias = lin.weight, lin.bias
    state = state_snapshot(model)
    new = {"weight": torch.randn(4, 4, generator=gen), "bias": torch.randn(4, generator=gen)}
    params = {f"{i}.{k}": v for i in ("0", "2") for k, v in new.items()}
    x = torch.randn(2, 4, generator=gen)
    got = modify.functional_call(model, params, x)
    assert_close(got, F.linear(torch.relu(F.linear(x, new["weight"], new["bias"])), new["weight"], new["bias"]))
    assert lin.weight is weight and lin.bias is bias
    assert_state_equal(model, state)


def test_training_mode_leaves_batchnorm_statistics_alone_also_when_raising(gen):
    for norm in (modify.BatchNorm1d(4), nn.BatchNorm1d(4, affine=False)):
        model = modify.Sequential(modify.Linear(4, 4), norm).train()
        state, buffers = state_snapshot(model), [id(b) for b in model.buffers()]
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        x = torch.randn(8, 4, generator=gen)
        out = modify.functional_call(model, params, x)
        torch.testing.assert_close(out, F.batch_norm(model[0](x), None, None, training=True))
        with pytest.raises(ValueError):
            modify.functional_call(model, params, torch.randn(8, 5, generator=gen))
        assert_state_equal(model, state)
        assert [id(b) for b in model.buffers()] == buffers


def test_given_buffers_receive_the_updates(gen):
    model = modify.Sequential(modify.BatchNorm1d(4)).train()
    mean = torch.zeros(4)
    modify.functional_call(model, {"0.running_mean": mean}, torch.randn(8, 4, generator=gen) + 3)
    assert mean.abs().sum() > 0 and model[0].running_mean.abs().sum() == 0


def test_strict_false_fills_missing_names_with_the_models_own(gen):
    model = make_mlp()
    x = torch.randn(4, 3, generator=gen)
    params = {"2.bias": torch.randn(2, generator=gen)}
    own = {k: v.detach() for k, v in model.named_parameters()}
    got = modify.functional_call(model, params, x, strict=False)
    assert_close(got, manual_mlp({**own, **params}, x))
    with pytest.raises(ValueError, match="missing parameters.*strict=False"):
        modify.functional_call(model, params, x)
    with pytest.raises(ValueError, match="no parameter or buffer 'nope'"):
        modify.functional_call(model, {"nope": torch.ones(1)}, x, strict=False)


def test_strict_false_still_refuses_unknown_misshaped_and_non_bool(gen):
    model = modify.Sequential(modify.Linear(3, 4), modify.Tanh(), modify.Linear(4, 2))
    x = torch.randn(5, 3, generator=gen)
    weight = torch.randn(2, 4, generator=gen)
    got = modify.functional_call(model, {"2.weight": weight}, x, strict=False)
    expected = torch.nn.functional.linear(model[1](model[0](x)), weight, model[2].bias)
    assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match="missing parameters"):
        modify.functional_call(model, {"2.weight": weight}, x)
    with pytest.raises(ValueError, match="has no parameter or buffer 'nope'"):
        modify.functional_call(model, {"nope": weight}, x, strict=False)
    with pytest.raises(ValueError, match="mis-shaped"):
        modify.functional_call(model, {"2.weight": weight.t()}, x, strict=False)
    with pytest.raises(TypeError, match="strict must be a bool"):
        modify.functional_call(model, {}, x, strict=None)
