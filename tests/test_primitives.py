"""Every primitive against an independent torch reference: output, gradients, state, gradcheck.

The cases live in ``primitive_cases.py``; a test here runs each case the same way.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from primitive_cases import CASES, INTEGER_OUTPUT, Case, rebuild, tensors_of
from torch import nn

import modify

IDS = [case.id for case in CASES]


def _with_grad(value, dtype: torch.dtype | None = None):
    """Fresh leaf copies of the value's tensors; floating ones require grad."""
    copies = []
    for t in tensors_of(value):
        t = t.detach().clone()
        if t.is_floating_point():
            t = t.to(dtype or t.dtype).requires_grad_()
        copies.append(t)
    return rebuild(value, copies), [t for t in copies if t.requires_grad]


def _run(module, value, seed: int = 1):
    torch.manual_seed(seed)  # the same dropout mask for ours and the reference
    return module(value)


def _gradients(module, reference, value, cotangents):
    """Output, input gradients and parameter gradients (by name) of one forward."""
    value, inputs = _with_grad(value)
    out = _run(reference, value)
    parameters = dict((reference if isinstance(reference, nn.Module) else module).named_parameters())
    outputs = tensors_of(out)
    grads = torch.autograd.grad(
        outputs, inputs + list(parameters.values()), cotangents(outputs), allow_unused=True, materialize_grads=True
    )
    return out, grads[: len(inputs)], dict(zip(parameters, grads[len(inputs) :]))


def _cotangents(outputs):
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference_in_output_gradient_and_state(case: Case, gen):
    ours = case.make().train(case.train)
    reference = case.reference(ours)
    if isinstance(reference, nn.Module):
        reference.train(case.train)
    value = case.inputs(gen)

    out, input_grads, param_grads = _gradients(ours, ours, value, _cotangents)
    ref_out, ref_input_grads, ref_param_grads = _gradients(ours, reference, value, _cotangents)

    assert_close(out, ref_out, atol=1e-5)
    assert_close(tuple(input_grads), tuple(ref_input_grads), atol=1e-5)
    assert list(param_grads) == list(ref_param_grads)
    assert_close(tuple(param_grads.values()), tuple(ref_param_grads.values()), atol=1e-5)
    if isinstance(reference, nn.Module):  # running statistics moved the same way
        assert list(ours.state_dict()) == list(reference.state_dict())
        assert_close(tuple(ours.state_dict().values()), tuple(reference.state_dict().values()))


@pytest.mark.parametrize("case", [c for c in CASES if c.differentiable], ids=[c.id for c in CASES if c.differentiable])
def test_gradcheck_float64(case: Case, gen):
    module = case.make().double().train(case.train)
    value, inputs = _with_grad(case.inputs(gen), torch.float64)
    names = [name for name, _ in module.named_parameters()]
    parameters = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def call(*tensors):
        xs = iter(tensors[: len(inputs)])
        given = rebuild(value, [next(xs) if t.requires_grad else t for t in tensors_of(value)])
        torch.manual_seed(1)
        out = torch.func.functional_call(module, dict(zip(names, tensors[len(inputs) :])), (given,))
        return tuple(tensors_of(out))

    assert inputs or parameters
    assert torch.autograd.gradcheck(call, tuple(inputs + parameters), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_in_float64_out(case: Case, gen):
    module = case.make().double().train(case.train)
    value = rebuild(
        case.inputs(gen), [t.double() if t.is_floating_point() else t for t in tensors_of(case.inputs(gen))]
    )
    for t in tensors_of(_run(module, value)):
        assert t.dtype == torch.float64


def test_every_public_leaf_has_a_case():
    leaves = {
        obj
        for name in modify.__all__
        if isinstance(obj := getattr(modify, name), type) and issubclass(obj, modify.Leaf)
    }
    leaves.discard(modify.Leaf)
    covered = {type(case.make()) for case in CASES}
    assert leaves - covered == set(INTEGER_OUTPUT)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: modify.Linear(5, 3), lambda: nn.Linear(5, 3)),
        (lambda: modify.Conv1d(2, 4, 3), lambda: nn.Conv1d(2, 4, 3)),
        (lambda: modify.Conv2d(3, 4, (3, 2), groups=1), lambda: nn.Conv2d(3, 4, (3, 2))),
        (lambda: modify.Embedding(7, 3, padding_idx=2), lambda: nn.Embedding(7, 3, padding_idx=2)),
    ],
)
def test_default_init_draws_as_torch_nn(ours, theirs):
    torch.manual_seed(3)
    a = ours()
    torch.manual_seed(3)
    b = theirs()
    assert list(a.state_dict()) == list(b.state_dict())
    for key, value in b.state_dict().items():
        assert torch.equal(a.state_dict()[key], value), key


def test_print_and_print_shape_show_the_value_and_pass_it_on(capsys):
    pair = (torch.ones(2, 3), (torch.zeros(4), torch.zeros(1, 1)))
    assert modify.PrintShape("qkv")(pair) is pair
    assert capsys.readouterr().out == "qkv: ((2, 3), ((4,), (1, 1)))\n"
    x = torch.tensor([1.5, -2.0])
    assert modify.Sequential(modify.Print(), modify.Print("after"))(x) is x
    assert capsys.readouterr().out == "tensor([ 1.5000, -2.0000])\nafter: tensor([ 1.5000, -2.0000])\n"


def test_breakpoint_stops_in_pdb_with_the_value_and_passes_it_on(monkeypatch):
    stops = []
    monkeypatch.setattr("pdb.Pdb.set_trace", lambda self, frame: stops.append(frame.f_locals["x"]))
    x = torch.ones(2)
    assert modify.Sequential(modify.Breakpoint())(x) is x
    assert stops == [x]
    assert modify.Breakpoint(enabled=False)(x) is x and len(stops) == 1


def test_dropout_drops_and_rescales_in_training_only(gen):
    x = torch.ones(2000)
    out = modify.Dropout(0.25)(x)
    kept = out != 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    assert modify.Dropout(0.25).eval()(x) is x and modify.Dropout(0.0)(x) is x
