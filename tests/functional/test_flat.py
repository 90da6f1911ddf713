"""modify.flat / FlatParam: the seed's (PyTorch-Reparam-Module) behaviours and the gaps it left."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modify
from tests.helpers import assert_close, assert_state_equal, state_snapshot


def convnet(dtype: torch.dtype = torch.float32) -> modify.Sequential:
    return modify.Sequential(
        modify.Conv2d(3, 4, 3, dtype=dtype),
        modify.ReLU(),
        modify.Flatten(1),
        modify.Linear(4 * 3 * 4, 5, dtype=dtype),
    )


def unflatten(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Independent reference: split theta in named_parameters order."""
    out, offset = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    return out


def test_reparam_readme_maml_loss_reaches_theta_0(gen):
    model = convnet()
    reference = copy.deepcopy(model)
    f = modify.flat(model)
    x = torch.randn(2, 3, 5, 6, generator=gen)

    def maml_loss(call, param, lr=0.01):
        out1 = call(param)
        gparam, = torch.autograd.grad(torch.norm(out1), param, create_graph=True)
        return torch.norm(call(param - lr * gparam))

    theta_0 = (torch.randn(f.param_numel, generator=gen) * 0.001).requires_grad_()
    loss = maml_loss(lambda t: f(x, flat_param=t), theta_0)
    grad, = torch.autograd.grad(loss, theta_0)
    ref_theta = theta_0.detach().clone().requires_grad_()
    ref_loss = maml_loss(lambda t: torch.func.functional_call(reference, unflatten(reference, t), (x,)), ref_theta)
    ref_grad, = torch.autograd.grad(ref_loss, ref_theta)
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("training", [False, True])
def test_reparam_two_sgd_steps_gradcheck_and_gradgradcheck_float64(gen, training):
    """The seed's own test: two differentiable SGD steps, checked to second order, state untouched.

    The seed's network (Linear, LeakyReLU(0.2), Linear, scaled by a buffer) with the buffer held by
    an eval-mode BatchNorm; in training mode only gradcheck, as PyTorch's batch norm has no exact
    third derivative (the same check fails on plain ``F.batch_norm``).
    """
    d = torch.float64
    model = modify.Sequential(
        modify.Linear(4, 5, dtype=d), nn.LeakyReLU(0.2), modify.Linear(5, 3, dtype=d), modify.BatchNorm1d(3, dtype=d)
    )
    with torch.no_grad():
        model[3].running_var.fill_(0.25)
    f = modify.flat(model).train(training)
    inp1, inp2 = (torch.randn(3, 4, dtype=d, generator=gen) for _ in range(2))
    target = torch.randn(3, 3, dtype=d, generator=gen)

    def buffers():
        return {k: v.clone() for k, v in f.module.named_buffers()}

    def sgd(flat_p1, inp1, inp2):
        out1 = f(inp1, flat_param=flat_p1, buffers=buffers())
        l1 = (out1 * target).mean()
        flat_p2 = flat_p1 - torch.autograd.grad(l1, flat_p1, create_graph=True)[0] * 0.02
        return f(inp2, flat_param=flat_p2, buffers=buffers())

    state = state_snapshot(f)
    theta = torch.randn(f.param_numel, dtype=d, generator=gen, requires_grad=True)
    sgd(theta, inp1, inp2)
    assert_state_equal(f, state)
    assert torch.autograd.gradcheck(sgd, (theta, inp1, inp2))
    if not training:
        assert torch.autograd.gradgradcheck(sgd, (theta, inp1, inp2))
    assert_state_equal(f, state)


def test_reparam_shared_params_counted_once_and_step_matches(gen):
    def net_and_input():
        torch.manual_seed(0)
        net = modify.Sequential(modify.Linear(10, 15, bias=False), modify.Linear(15, 10, bias=False),
                                modify.Linear(10, 15, bias=False))
        net[2].weight = net[0].weight  # first and last layer share weights
        return net, torch.rand(2, 10)

    net, x = net_and_input()
    optim = torch.optim.SGD(net.parameters(), lr=1.0)
    net(x).sum().backward()
    optim.step()
    ref_norm = torch.norm(torch.stack([p.norm() for p in net.parameters()]))

    net, x = net_and_input()
    f = modify.flat(net)
    assert f.param_numel == 300
    optim = torch.optim.SGD(f.parameters(), lr=1.0)
    f(x).sum().backward()
    optim.step()
    assert_close(f.flat_param.norm(), ref_norm)
    assert net[0].weight is net[2].weight  # still tied, and reading the stepped values
    assert_close(torch.cat([net[0].weight.reshape(-1), net[1].weight.reshape(-1)]), f.flat_param.detach())


def test_only_parameter_outputs_equal_and_original_keeps_its_parameters(gen):
    model = convnet()
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    x = torch.randn(2, 3, 5, 6, generator=gen)
    expected = model(x)
    f = modify.flat(model)
    assert tuple(f.parameters()) == (f.flat_param,)
    assert f.param_numel == sum(p.numel() for p in params) == f.flat_param.numel()
    assert torch.equal(f(x), expected) and torch.equal(model(x), expected)
    assert list(model.parameters()) == params and all(isinstance(p, nn.Parameter) for p in params)
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    # the original's storage is flat_param's: a step on either side is seen by the other
    with torch.no_grad():
        f.flat_param.mul_(2)
    assert torch.equal(model[0].weight, 2 * values[0])
    with torch.no_grad():
        model[3].bias.zero_()
    assert torch.count_nonzero(f.flat_param[-5:]) == 0
    assert torch.equal(f(x), model(x))
    # a later .to() on the original ends the sharing (documented)
    model.to(torch.float64)
    with torch.no_grad():
        f.flat_param.zero_()
    assert model[0].weight.abs().sum() > 0


def test_parameters_keep_gradients_separate(gen):
    model = convnet()
    f = modify.flat(model)
    x = torch.randn(2, 3, 5, 6, generator=gen)
    f(x).sum().backward()
    assert f.flat_param.grad is not None and all(p.grad is None for p in model.parameters())
    reference = copy.deepcopy(model)
    reference(x).sum().backward()
    assert_close(f.flat_param.grad, torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))


def test_substituted_forward_restores_state_even_when_it_raises(gen):
    model = convnet()
    f = modify.flat(model)
    state = state_snapshot(f)
    theta = torch.randn(f.param_numel, generator=gen)
    with pytest.raises(ValueError):
        f(torch.randn(2, 7, 5, 6), flat_param=theta)  # wrong channel count inside the forward
    assert_state_equal(f, state)
    shown = f.module[0].weight  # the sibling shows flat_param's values again, detached
    assert torch.equal(shown, model[0].weight) and not shown.requires_grad
    assert shown.data_ptr() == f.flat_param.data_ptr()
    x = torch.randn(1, 3, 5, 6, generator=gen)
    assert torch.equal(f(x), model(x))
    assert_close(f(x, flat_param=theta), torch.func.functional_call(model, unflatten(model, theta), (x,)))
    assert list(f.state_dict()) == ["flat_param"]
    assert len(list(f.module.parameters())) == 0


def test_bad_models_and_arguments_raise():
    with pytest.raises(ValueError, match="no parameters"):
        modify.flat(modify.ReLU())
    mixed = modify.Sequential(modify.Linear(2, 2), modify.Linear(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"one dtype.*torch.float32: 0.weight, 0.bias; torch.float64: 1.weight"):
        modify.flat(mixed)
    f = modify.flat(modify.Linear(2, 2))
    with pytest.raises(ValueError, match=r"shape \(6,\).*vmap"):
        f(torch.zeros(2), flat_param=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="float64"):
        f(torch.zeros(2), flat_param=torch.zeros(6, dtype=torch.float64))
    with pytest.raises(TypeError):
        f(torch.zeros(2), flat_param=[0.0] * 6)
    with pytest.raises(ValueError, match="no buffers"):
        f(torch.zeros(2), buffers={"running_mean": torch.zeros(2)})
    with pytest.raises(TypeError):
        modify.flat("model")


def test_batchnorm_running_stats(gen):
    model = modify.Sequential(modify.Linear(3, 4), modify.BatchNorm1d(4))
    f = modify.flat(model)
    x = torch.randn(8, 3, generator=gen)
    h = model[0](x).detach()
    # training, no buffers=: the shared statistics (the model's own) are updated
    f(x)
    assert_close(model[1].running_mean, 0.1 * h.mean(0))
    # training with buffers=: the given ones are updated, the model's are not
    before = state_snapshot(model)
    given = {"1.running_mean": torch.zeros(4), "1.running_var": torch.ones(4), "1.num_batches_tracked": torch.tensor(0)}
    f(x, buffers=given)
    assert_close(given["1.running_mean"], 0.1 * h.mean(0))
    assert_state_equal(model, before)
    assert f.module[1].running_mean is model[1].running_mean  # the sibling's own are back
    # eval mode is f's own; it normalises with the statistics in use
    f.eval()
    assert model.training and not f.module[1].training
    assert_close(f(x), F.batch_norm(h, model[1].running_mean, model[1].running_var))


@pytest.mark.parametrize("tied", [False, True])
def test_substituted_forward_in_training_leaves_batchnorm_statistics_unchanged(gen, tied):
    """DESIGN 4: ``f(x, flat_param=theta)`` leaves state_dict() unchanged, BatchNorm in training mode included."""
    bn = modify.BatchNorm1d(4)
    model = modify.Sequential(modify.Linear(3, 4), bn, bn if tied else modify.BatchNorm1d(4))
    f = modify.flat(model)
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, generator=gen)
    theta = torch.randn(f.param_numel, generator=gen)
    before, own_before = state_snapshot(model), state_snapshot(f)
    out = f(x, flat_param=theta)
    assert_state_equal(model, before)
    assert_state_equal(f, own_before)
    params = unflatten(reference, theta)
    assert_close(out, torch.func.functional_call(reference, params, (x,)))  # training-mode batch statistics
    # given buffers= still receive the updates, the model's stay as they were
    given = {"1.running_mean": torch.zeros(4), "1.running_var": torch.ones(4), "1.num_batches_tracked": torch.tensor(0)}
    expected = {k: v.clone() for k, v in given.items()}
    f(x, flat_param=theta, buffers=given)
    torch.func.functional_call(reference, {**params, **expected}, (x,))
    assert_close(given, expected)
    assert not torch.equal(given["1.running_mean"], torch.zeros(4))
    assert_state_equal(model, before)
    with pytest.raises(modify.ModifyValueError):
        f(torch.randn(8, 5), flat_param=theta)
    assert_state_equal(model, before)
    assert f.module[1].running_mean is model[1].running_mean


def test_vmap_over_a_batch_of_flat_vectors(gen):
    model = convnet()
    f = modify.flat(model)
    thetas = torch.randn(4, f.param_numel, generator=gen)
    xs = torch.randn(4, 2, 3, 5, 6, generator=gen)
    got = torch.func.vmap(lambda t, x: f(x, flat_param=t))(thetas, xs)
    expected = torch.stack([torch.func.functional_call(model, unflatten(model, t), (x,)) for t, x in zip(thetas, xs)])
    assert_close(got, expected, atol=1e-5)


def test_deepcopy_to_and_state_dict_round_trip(gen):
    model = modify.Sequential(modify.Linear(3, 4), modify.BatchNorm1d(4)).eval()
    f = modify.flat(model)
    x = torch.randn(5, 3, generator=gen)
    clone = copy.deepcopy(f)
    assert torch.equal(clone(x), f(x))
    with torch.no_grad():
        clone.flat_param.zero_()
    assert f.flat_param.abs().sum() > 0 and torch.count_nonzero(clone.module[0].weight) == 0
    assert list(f.state_dict()) == ["flat_param", "module.1.running_mean", "module.1.running_var",
                                    "module.1.num_batches_tracked"]
    clone.load_state_dict(f.state_dict())
    assert torch.equal(clone(x), f(x))
    f.double()
    assert f.flat_param.dtype == torch.float64 and f.module[0].weight.dtype == torch.float64
    assert model[0].weight.dtype == torch.float32 and model[1].running_mean.dtype == torch.float32
    assert_close(f(x.double()), model.double()(x.double()))


def test_training_flat_param_trains_the_model(gen):
    model = modify.Sequential(modify.Linear(2, 8), modify.Tanh(), modify.Linear(8, 1))
    f = modify.flat(model)
    x = torch.randn(32, 2, generator=gen)
    y = x[:, :1] * x[:, 1:]
    opt = torch.optim.Adam(f.parameters(), lr=0.05)
    first = F.mse_loss(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(f(x), y).backward()
        opt.step()
    assert F.mse_loss(model(x), y).item() < first


class Reenter(nn.Module):
    """Identity that runs ``pending.pop()`` on its input if one is pending (a nested flat call)."""

    def __init__(self):
        super().__init__()
        self.pending: list = []  # a plain list: shared with the flat sibling's copy of this module
        self.outputs: list = []

    def forward(self, x):
        if self.pending:
            self.outputs.append(self.pending.pop()(x))
        return x


def test_flat_model_called_inside_its_own_forward_leaves_the_outer_call_intact(gen):
    model = modify.Sequential(modify.Linear(3, 4), Reenter(), modify.Tanh(), modify.Linear(4, 2))
    reference = copy.deepcopy(model)
    f = modify.flat(model)
    reenter = model[1]  # an opaque leaf sharing Reenter's lists
    x = torch.randn(5, 3, generator=gen)
    outer = torch.randn(f.param_numel, generator=gen, requires_grad=True)
    inner = torch.randn(f.param_numel, generator=gen)
    reenter.pending.append(lambda h: f(h[:, :3], flat_param=inner))
    got = f(x, flat_param=outer)
    grad, = torch.autograd.grad(got.sum(), outer)

    ref_outer = outer.detach().clone().requires_grad_()
    expected = torch.func.functional_call(reference, unflatten(reference, ref_outer), (x,))
    expected_grad, = torch.autograd.grad(expected.sum(), ref_outer)
    assert_close(got, expected)
    assert_close(grad, expected_grad)
    params = unflatten(reference, outer.detach())
    h = F.linear(x, params["0.weight"], params["0.bias"])
    inner_expected = torch.func.functional_call(reference, unflatten(reference, inner), (h[:, :3],))
    assert_close(reenter.outputs.pop(), inner_expected)
    assert torch.equal(f(x), model(x)) and torch.equal(f.module[0].weight, model[0].weight)


def test_flat_of_a_model_holding_a_flat_model_runs_its_own_sibling(gen):
    inner = modify.flat(modify.Linear(3, 4))
    model = modify.Sequential(inner, modify.Tanh(), modify.Linear(4, 2))
    f = modify.flat(model)
    assert [name for name, _ in model.named_parameters()] == ["0.flat_param", "2.weight", "2.bias"]
    theta = torch.randn(f.param_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    f.double()

    def reference(t):  # inner flat_param = its weight then its bias
        h = torch.tanh(F.linear(x, t[:12].view(4, 3), t[12:16]))
        return F.linear(h, t[16:24].view(2, 4), t[24:])

    assert_close(f(x, flat_param=theta), reference(theta))
    assert torch.autograd.gradgradcheck(lambda t: f(x, flat_param=t), (theta,))
    assert_close(f(x), reference(f.flat_param))


def test_compiled_with_a_substituted_vector_without_graph_breaks(gen):
    model = modify.Sequential(modify.Linear(3, 4), modify.Tanh(), modify.Linear(4, 2))
    f = modify.flat(model)
    x = torch.randn(5, 3, generator=gen)
    theta = torch.randn(f.param_numel, generator=gen, requires_grad=True)

    def call(t, x):
        return f(x, flat_param=t)

    torch._dynamo.reset()
    assert torch._dynamo.explain(call)(theta, x).graph_break_count == 0
    compiled = torch.compile(call, backend="eager", fullgraph=True)
    got, expected = compiled(theta, x), torch.func.functional_call(model, unflatten(model, theta), (x,))
    assert_close(got, expected)
    assert_close(torch.autograd.grad(got.sum(), theta)[0], torch.autograd.grad(expected.sum(), theta)[0])
    shown = f.module[0].weight  # the compiled call put the detached views back too
    assert torch.equal(shown, model[0].weight) and not shown.requires_grad
    torch._dynamo.reset()
