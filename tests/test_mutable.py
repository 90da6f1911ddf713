"""modify.mutable: assign any tensor (predicted, non-leaf) to parameters of a sibling."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modify
from tests.helpers import assert_close, assert_state_equal, state_snapshot


def make_mlp() -> modify.Sequential:
    return modify.Sequential(modify.Linear(3, 4), modify.Tanh(), modify.Linear(4, 2))


def test_torch_mutable_modules_readme_example(gen):
    """net_1 predicts net_2's weight and bias; loss.backward() reaches net_1 (README of the seed)."""
    net_1 = nn.Linear(1, 2)
    input_0, input_1, label = torch.randn(1, 1, generator=gen), torch.randn(5, 1, generator=gen), torch.randn(5, 1)
    original = nn.Linear(1, 1)
    before = state_snapshot(original)
    net_2 = modify.mutable(original)
    assert isinstance(net_2, nn.Linear)

    p_weight_and_bias = net_1(input_0).unsqueeze(2)  # (1, 2, 1)
    # the README assigns p_weight_and_bias[:, 1], shape (1, 1), to a (1,)-bias and relies on
    # broadcasting; modify refuses shape changes, so the bias is taken as (1,)
    p_weight, p_bias = p_weight_and_bias[:, 0], p_weight_and_bias[0, 1]
    net_2.weight = p_weight
    net_2.bias = p_bias
    output = net_2(input_1)
    loss = F.mse_loss(output, label)
    loss.backward()

    # reference: the same computation written with F.linear on the predicted tensors
    reference_net_1 = copy.deepcopy(net_1)
    reference_net_1.zero_grad()
    predicted = reference_net_1(input_0).unsqueeze(2)
    F.mse_loss(F.linear(input_1, predicted[:, 0], predicted[0, 1]), label).backward()
    assert_close(net_1.weight.grad, reference_net_1.weight.grad)
    assert_close(net_1.bias.grad, reference_net_1.bias.grad)
    assert net_1.weight.grad.abs().sum() > 0
    assert_state_equal(original, before)
    assert original.weight.grad is None


def test_starts_shared_and_assignment_never_touches_the_original(gen):
    base = make_mlp()
    x = torch.randn(5, 3, generator=gen)
    out, state = base(x), state_snapshot(base)
    mut = modify.mutable(base)
    assert dict(mut.named_parameters())["0.weight"] is base[0].weight and list(mut.parameters()) == list(base.parameters())
    assert mut[0].weight.data_ptr() == base[0].weight.data_ptr()  # read as an attribute: a guarded alias
    assert torch.equal(mut(x), out)
    predicted = torch.randn(4, 3, generator=gen, requires_grad=True) * 2  # non-leaf
    mut[0].weight = predicted
    assert mut[0].weight is predicted
    assert base[0].weight is not predicted
    assert_state_equal(base, state)
    assert torch.equal(base(x), out)
    reference = base[2](torch.tanh(F.linear(x, predicted, base[0].bias)))
    assert_close(mut(x), reference)


def test_in_place_on_a_still_shared_parameter_raises_the_leaf_error():
    mut = modify.mutable(make_mlp())
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        mut[0].weight += 1


@pytest.mark.parametrize("init", [torch.nn.init.zeros_, torch.nn.init.kaiming_uniform_, torch.nn.init.orthogonal_,
                                  lambda t: torch.nn.init.constant_(t, 2.0)])
def test_nn_init_on_a_still_shared_parameter_raises_and_leaves_the_original(init):
    base = make_mlp()
    state = state_snapshot(base)
    mut = modify.mutable(base)
    assert torch.is_grad_enabled() and base[0].weight.requires_grad
    with pytest.raises(RuntimeError, match="still shared with the original"):
        init(mut[0].weight)
    assert_state_equal(base, state)
    mut[0].weight = torch.zeros(4, 3)  # assigned first: then anything goes
    init(mut[0].weight)
    assert_state_equal(base, state)


def test_the_grad_of_a_shared_parameter_read_as_an_attribute_is_the_parameters(gen):
    base = make_mlp()
    mut = modify.mutable(base)
    mut(torch.randn(5, 3, generator=gen)).sum().backward()
    assert mut[0].weight.grad is base[0].weight.grad and base[0].weight.grad is not None


def test_in_place_after_assignment_is_differentiable(gen):
    mut = modify.mutable(make_mlp())
    source = torch.randn(4, 3, generator=gen, requires_grad=True)
    mut[0].weight = source * 1.0
    mut[0].weight += 1
    mut[0].weight.mul_(2)
    x = torch.randn(6, 3, generator=gen)
    mut(x).sum().backward()
    reference_source = source.detach().clone().requires_grad_()
    w = (reference_source + 1) * 2
    mut[2](torch.tanh(F.linear(x, w, mut[0].bias))).sum().backward()
    assert_close(source.grad, reference_source.grad)


def test_state_dict_reports_the_tensors_in_use_and_parameters_lists_parameters(gen):
    base = make_mlp()
    mut = modify.mutable(base)
    predicted = torch.randn(4, 3, generator=gen, requires_grad=True).exp()
    new_bias = nn.Parameter(torch.zeros(2))
    mut[0].weight, mut[2].bias = predicted, new_bias
    state = mut.state_dict()
    assert list(state) == list(base.state_dict())
    assert torch.equal(state["0.weight"], predicted.detach()) and not state["0.weight"].requires_grad
    assert mut.state_dict(keep_vars=True)["0.weight"] is predicted
    names = [n for n, _ in mut.named_parameters()]
    assert names == ["0.bias", "2.weight", "2.bias"]  # the non-leaf is not a parameter
    assert dict(mut.named_parameters())["2.bias"] is new_bias
    assert dict(mut.named_parameters())["0.bias"] is base[0].bias


def test_to_moves_the_tensors_in_use_and_keeps_gradients(gen):
    base = make_mlp()
    mut = modify.mutable(base)
    source = torch.randn(4, 3, generator=gen, requires_grad=True)
    mut[0].weight = source * 3
    moved = mut.to(torch.float64)
    assert moved is mut
    assert all(t.dtype == torch.float64 for t in mut.state_dict().values())
    assert all(p.dtype == torch.float32 for p in base.parameters())  # the original keeps its own
    assert mut[0].bias is not base[0].bias and isinstance(mut[0].bias, nn.Parameter)
    assert torch.equal(mut[0].bias, base[0].bias.double())
    x = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    mut(x).sum().backward()
    assert source.grad is not None and source.grad.dtype == torch.float32
    assert mut.to(torch.float64) is mut and mut[0].bias is mut.state_dict(keep_vars=True)["0.bias"]


def tied_model() -> modify.Sequential:
    model = modify.Sequential(modify.Linear(3, 3, bias=False), modify.Tanh(), modify.Linear(3, 3, bias=False))
    model[2].weight = model[0].weight
    return model


def test_tied_weights_stay_tied_through_assignment_to_and_deepcopy(gen):
    base = tied_model()
    mut = modify.mutable(base)
    predicted = torch.randn(3, 3, generator=gen, requires_grad=True) + 0
    mut[2].weight = predicted  # assigning one name of a tied pair assigns both
    assert mut[0].weight is predicted and mut[2].weight is predicted
    assert base[0].weight is base[2].weight and base[0].weight is not predicted
    assert list(mut.state_dict()) == ["0.weight", "2.weight"]
    mut.to(torch.float64)
    assert mut[0].weight is mut[2].weight and mut[0].weight.dtype == torch.float64
    clone = copy.deepcopy(mut)
    assert clone[0].weight is clone[2].weight and clone[0].weight is not mut[0].weight
    clone[0].weight = torch.zeros(3, 3, dtype=torch.float64)
    assert torch.count_nonzero(clone[2].weight) == 0 and torch.count_nonzero(mut[2].weight) > 0


def test_deepcopy_copies_non_leaf_tensors_as_leaves(gen):
    mut = modify.mutable(make_mlp())
    source = torch.randn(4, 3, generator=gen, requires_grad=True)
    mut[0].weight = source * 2
    clone = copy.deepcopy(mut)
    assert clone[0].weight.is_leaf and clone[0].weight.requires_grad
    assert torch.equal(clone[0].weight, mut[0].weight) and clone[0].weight is not mut[0].weight
    assert isinstance(clone[0], modify.Linear) and type(clone[0]) is type(mut[0])
    x = torch.randn(2, 3, generator=gen)
    assert torch.equal(clone(x), mut(x))
    clone[0].weight = torch.zeros(4, 3)
    assert not torch.equal(clone(x), mut(x))


def test_applying_twice_is_a_no_op_and_types_are_kept():
    base = make_mlp()
    mut = modify.mutable(base)
    assert modify.mutable(mut) is mut
    assert isinstance(mut[0], modify.Linear) and isinstance(mut, modify.Sequential)
    assert modify.traits_of(mut[0]) == modify.traits_of(base[0])
    assert type(mut[0]).__name__ == "Linear" and "Linear(in_features=3" in repr(mut)


def test_bad_assignments_raise():
    mut = modify.mutable(make_mlp())
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        mut[0].weight = torch.zeros(3, 4)
    with pytest.raises(TypeError, match="takes a tensor"):
        mut[0].weight = 1.0
    with pytest.raises(TypeError, match="cannot delete"):
        del mut[0].weight


def test_load_state_dict_assigns_new_parameters(gen):
    base = make_mlp()
    before = state_snapshot(base)
    mut = modify.mutable(base)
    mut[0].weight = torch.randn(4, 3, generator=gen, requires_grad=True) * 1
    source = make_mlp()
    mut.load_state_dict(source.state_dict())
    assert_state_equal(base, before)
    assert_state_equal(mut, state_snapshot(source))
    assert all(isinstance(p, nn.Parameter) for p in mut.state_dict(keep_vars=True).values())
    assert len(list(mut.parameters())) == 4
    with pytest.raises(RuntimeError, match="size mismatch"):
        mut.load_state_dict({**source.state_dict(), "0.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        mut.load_state_dict({k: v for k, v in source.state_dict().items() if k != "2.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        mut.load_state_dict({**source.state_dict(), "extra": torch.zeros(1)})


def test_wrapped_torch_modules_and_their_children_become_mutable(gen):
    inner = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    base = modify.Sequential(inner, modify.Linear(3, 1))
    mut = modify.mutable(base)
    assert isinstance(mut[0], nn.Sequential) and isinstance(mut[0][0], nn.Linear)
    mut[0][0].weight = torch.eye(3, requires_grad=True) * 2
    assert inner[0].weight is not mut[0][0].weight
    x = torch.randn(4, 3, generator=gen)
    assert_close(mut(x), base[1](torch.relu(F.linear(x, 2 * torch.eye(3), inner[0].bias))))


def test_buffers_are_shared_until_assigned(gen):
    base = modify.Sequential(modify.Linear(3, 3), modify.BatchNorm1d(3))
    mut = modify.mutable(base)
    assert mut[1].running_mean is base[1].running_mean
    mut[1].running_mean = torch.ones(3)
    assert torch.equal(base[1].running_mean, torch.zeros(3))
    mut.double()
    assert base[1].running_var.dtype == torch.float32


def test_works_with_torch_func_functional_call(gen):
    mut = modify.mutable(make_mlp())
    params = {k: torch.randn(v.shape, generator=gen) for k, v in mut.state_dict().items()}
    x = torch.randn(2, 3, generator=gen)
    got = torch.func.functional_call(mut, params, (x,))
    hidden = torch.tanh(F.linear(x, params["0.weight"], params["0.bias"]))
    reference = F.linear(hidden, params["2.weight"], params["2.bias"])
    assert_close(got, reference)


def test_torch_save_round_trip_including_wrapped_modules(gen):
    import io

    mut = modify.mutable(modify.Sequential(modify.Linear(2, 3), nn.Sequential(nn.Linear(3, 3), nn.ReLU())))
    mut[0].weight = torch.randn(3, 2, generator=gen, requires_grad=True) * 2
    buffer = io.BytesIO()
    torch.save(mut, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(4, 2, generator=gen)
    assert torch.equal(loaded(x), mut(x))
    assert isinstance(loaded[1], nn.Sequential) and modify.mutable(loaded) is loaded
    loaded[1][0].weight = torch.zeros(3, 3)
    assert torch.count_nonzero(mut[1][0].weight) > 0


@pytest.mark.parametrize("mode", ["frozen", "no_grad"])
def test_in_place_on_a_shared_parameter_raises_where_torch_would_allow_it(mode, gen):
    base = make_mlp()
    if mode == "frozen":
        base.requires_grad_(False)
    state, x = state_snapshot(base), torch.randn(2, 3, generator=gen)
    mut = modify.mutable(base)
    with torch.no_grad() if mode == "no_grad" else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match="still shared with the original"):
            mut[0].weight += 1
        with pytest.raises(RuntimeError, match="still shared with the original"):
            torch.nn.init.zeros_(mut[2].bias)
        assert torch.equal(mut(x), base(x))
        mut[0].weight = mut[0].weight * 2  # out of place: a new tensor, then in place on it
        mut[0].weight += 1
    assert_state_equal(base, state)
    assert torch.equal(mut[0].weight, base[0].weight * 2 + 1)


def test_mutable_over_a_quantized_model_keeps_the_quantized_weights_constant(gen):
    base = modify.Sequential(modify.Linear(64, 32), modify.GELU(), modify.Linear(32, 8))
    quantized = modify.quantize(base, "nf4")
    before = {name: tensor.get_original_weight() if name.endswith("weight") else tensor.clone()
              for name, tensor in quantized.state_dict().items()}  # fmt: skip
    net = modify.mutable(quantized)
    x = torch.randn(3, 64, generator=gen)
    assert torch.equal(net(x), quantized(x))
    assert net[0].weight is quantized[0].weight  # the frozen constant itself, not an alias
    with pytest.raises(TypeError, match=r"QuantizedLinear\.weight at '0' is a constant.*quantized"):
        net[0].weight = torch.zeros(32, 64)
    predictor = torch.nn.Linear(1, 8)
    net[2].bias = predictor(torch.ones(1))  # float tensors stay mutable, gradients reach the predictor
    expected = torch.nn.functional.linear(torch.nn.functional.gelu(quantized[0](x)), quantized[2].dequantize(), net[2].bias)
    out = net(x)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert predictor.weight.grad is not None and quantized[2].bias.grad is None
    assert list(net.state_dict()) == list(quantized.state_dict())
    assert torch.equal(copy.deepcopy(net)(x), net(x))
    for name, tensor in quantized.state_dict().items():  # the original is untouched
        assert torch.equal(tensor.get_original_weight() if name.endswith("weight") else tensor, before[name])
