"""A tree's forward as one straight-line function (``modify/_core/straight_line.py``).

From a combinator's second unobserved call on, its subtree runs as one generated function. It must
compute what the combinators compute (checked against transformers and against the combinators
themselves, with the hook registry set so that they loop), name the same paths in errors, follow
changes of the tree, keep activation checkpointing, and give way to hooks.
"""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import weakref

import pytest
import torch
import transformers

import modify
from modify._core import hooks, straight_line
from modify._core.errors import ModifyValueError
from modify.models import GPT, CarryAdd, Pick
from modify.primitives import AffineLayerNorm
from modify.traits import Elementwise, Linear, ParamFree, Unary

GPT2 = dict(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=None)


@pytest.fixture
def fresh_registry(monkeypatch):
    """No modify module hooked yet, as in a new process (restored afterwards)."""
    monkeypatch.setattr(hooks, "_hooked", False)


def gpt_pair() -> tuple[transformers.GPT2LMHeadModel, GPT]:
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2, resid_pdrop=0.0, embd_pdrop=0.0)).eval()
    ours = GPT.from_pretrained(reference.state_dict(), vocab_size=64, block_size=16, n_embd=32, n_layer=2, n_head=4)
    return reference, ours.eval()


def looped(model: torch.nn.Module, x, monkeypatch) -> object:
    """``model(x)`` with the combinators looping over their children (the registry says 'hooked')."""
    with monkeypatch.context() as patch:
        patch.setattr(hooks, "_hooked", True)
        return model(x)


def written(module: torch.nn.Module) -> bool:
    entry = straight_line._written.get(module)
    return entry is not None and entry[1] is not None


def combinator_frames(run) -> int:
    """How many Python frames of ``Sequential.forward``/``Parallel.forward`` ``run()`` enters."""
    codes = {modify.Sequential.forward.__code__, modify.Parallel.forward.__code__}
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        count += event == "call" and frame.f_code in codes

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def test_gpt_runs_in_one_frame_from_the_second_call_with_transformers_logits(fresh_registry, monkeypatch):
    reference, ours = gpt_pair()
    ids = torch.randint(0, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # row 0 left-padded
    first = combinator_frames(lambda: ours((ids, mask)))
    second = combinator_frames(lambda: ours((ids, mask)))
    assert first > 20 and second == 1 and written(ours)
    logits = ours((ids, mask))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as transformers' generate derives them
    expected = reference(ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(logits[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
    assert torch.equal(logits, looped(ours, (ids, mask), monkeypatch))


def test_gradients_equal_the_looping_combinators(fresh_registry, monkeypatch):
    _, ours = gpt_pair()
    model = modify.lora(ours.train(), rank=2)
    ids = torch.randint(0, 64, (2, 7))
    grads = []
    for run in (lambda: model(ids), lambda: model(ids), lambda: looped(model, ids, monkeypatch)):
        model.zero_grad()
        run().square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert written(model) and grads[1].keys() == grads[2].keys() and len(grads[1]) > 0
    for name in grads[1]:
        assert torch.equal(grads[1][name], grads[2][name]), name


def test_float64_gradcheck_through_the_written_function(fresh_registry):
    torch.manual_seed(0)
    model = modify.Sequential(
        modify.Residual(modify.Sequential(modify.LayerNorm(4), modify.ElementwiseAffine(4), modify.Linear(4, 4))),
        modify.Fork(modify.Linear(4, 3), modify.Tanh()),
    ).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    model(x)
    model(x)
    assert written(model)
    assert torch.autograd.gradcheck(lambda x: model(x)[0] * model(x)[1][:, :3], (x,))


def test_errors_name_the_same_path_as_the_combinators(fresh_registry, monkeypatch):
    _, ours = gpt_pair()
    good, bad = torch.randint(0, 64, (2, 5)), (torch.randint(0, 64, (2, 5)), torch.ones(2, 4, dtype=torch.long))
    ours(good), ours(good)
    assert written(ours)
    with pytest.raises(ModifyValueError) as straight:
        ours(bad)
    with pytest.raises(ModifyValueError) as loop:
        looped(ours, bad, monkeypatch)
    assert str(straight.value) == str(loop.value) and "'transformer.embed.tokens'" in str(straight.value)


def test_a_torch_error_gets_the_same_note(fresh_registry, monkeypatch):
    model = modify.Sequential(inner=modify.Parallel(modify.Identity(), modify.Sequential(deep=torch.nn.Linear(3, 2))))
    bad = (torch.ones(1), torch.ones(2, 4))
    notes = []
    for run in (lambda: model(bad), lambda: model(bad), lambda: looped(model, bad, monkeypatch)):
        with pytest.raises(RuntimeError) as error:
            run()
        notes.append(error.value.__notes__)
    assert written(model) and notes[1] == notes[2] and "'inner.1.deep'" in notes[1][-1]


def test_a_nested_parallel_checks_its_tuple(fresh_registry, monkeypatch):
    model = modify.Sequential(modify.Identity(), modify.Parallel(modify.Identity(), modify.ReLU()))
    x = torch.ones(3)
    model((x, x)), model((x, x))
    assert written(model)
    with pytest.raises(ModifyValueError, match="Parallel at '1' got a tuple of 3 values for 2 branches"):
        model((x, x, x))


def test_the_top_parallel_checks_its_tuple(fresh_registry):
    both = modify.Parallel(modify.ReLU(), modify.ReLU())
    x = torch.ones(3)
    both((x, x)), both((x, x))
    assert written(both)
    with pytest.raises(ModifyValueError, match="got a tuple of 3 values for 2 branches"):
        both((x, x, x))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m[1], "0", modify.Scale(10.0)),
        lambda m: m[1].add_module("0", modify.Scale(10.0)),
        lambda m: m[1].register_module("0", modify.Scale(10.0)),
    ],
    ids=["setattr", "add_module", "register_module"],
)
def test_a_changed_child_is_run_after_the_change(fresh_registry, change):
    model = modify.Sequential(modify.ReLU(), modify.Sequential(modify.Scale(2.0)))
    x = torch.ones(2)
    model(x), model(x)
    assert written(model)
    change(model)
    assert model(x).tolist() == [10.0, 10.0] and model(x).tolist() == [10.0, 10.0]


def test_a_deleted_child_is_not_run(fresh_registry):
    model = modify.Sequential(modify.ReLU(), modify.Sequential(a=modify.Scale(2.0), b=modify.Scale(3.0)))
    x = torch.ones(2)
    model(x), model(x)
    del model[1].b
    assert model(x).tolist() == [2.0, 2.0] and model(x).tolist() == [2.0, 2.0]


def test_a_tree_built_for_one_call_is_not_written(fresh_registry):
    model = modify.Sequential(modify.Linear(2, 2), modify.ReLU(), modify.Linear(2, 2))
    piece = model[:-1]
    piece(torch.ones(2))
    assert not written(piece)
    piece(torch.ones(2))
    assert written(piece)


def test_activation_checkpointing_still_recomputes(fresh_registry):
    _, ours = gpt_pair()
    light = modify.checkpoint_activations(ours.train(), where="transformer.h.*")
    ids = torch.randint(0, 64, (2, 6))
    runs = []
    block = light.get_submodule("transformer.h.0")
    original = type(block)._released_forward

    def counted(self, x):
        runs.append(self is block)
        return original(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(block), "_released_forward", counted)
        light(ids), light(ids)
        assert written(light)
        runs.clear()
        light(ids).sum().backward()
    assert runs.count(True) == 2  # the forward, and again in the backward pass


def test_hooks_put_after_the_function_was_written_fire(fresh_registry):
    model = modify.Sequential(modify.Linear(2, 2), modify.Sequential(modify.ReLU(), modify.Linear(2, 2)))
    x = torch.ones(1, 2)
    before = model(x), model(x)
    assert written(model)
    seen = []
    model[1][1].register_forward_hook(lambda m, args, out: seen.append(out.shape) or out * 0)
    assert model(x).abs().sum() == 0 and seen == [(1, 2)] and before[1].abs().sum() > 0


def test_copies_pickles_and_the_original_compute_alike(fresh_registry):
    _, ours = gpt_pair()
    ids = torch.randint(0, 64, (1, 6))
    expected = ours(ids)
    ours(ids)
    assert written(ours)
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert torch.equal(twin(ids), expected) and torch.equal(twin(ids), expected)


def test_the_function_dies_with_its_module(fresh_registry):
    model = modify.Sequential(modify.Linear(2, 2), modify.ReLU())
    model(torch.ones(2)), model(torch.ones(2))
    count = len(straight_line._written)
    del model
    gc.collect()
    assert len(straight_line._written) == count - 1


class Probe(modify.Leaf, Unary, ParamFree, Linear, Elementwise):
    """Doubles its input; records which earlier probes' outputs are still alive when it is called."""

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def forward(self, x):
        self.alive = [ref() is not None for ref in self.log]
        out = x * 2
        self.log.append(weakref.ref(out))
        return out


def test_each_value_lives_only_until_its_last_use(fresh_registry):
    """An output is dropped once the next leaf has returned (no-grad inference keeps no activation)."""
    log: list = []
    first, second, third = Probe(log), Probe(log), Probe(log)
    model = modify.Sequential(first, modify.Sequential(second, third))
    with torch.no_grad():
        for _ in range(2):
            log.clear()
            model(torch.ones(3))
    assert written(model) and third.alive == [False, True]


# Each leaf with a ``line_expression``, with an input its forward accepts and one its checks refuse.
X = torch.randn(2, 3, 8, dtype=torch.float64)
HEADS = torch.randn(2, 4, 3, 5, dtype=torch.float64)
WRITTEN_AS_ONE_CALL = [
    (lambda: modify.Linear(8, 4, dtype=torch.float64), X, torch.randn(2, 3, 7, dtype=torch.float64), "last dimension 8"),
    (lambda: modify.Embedding(10, 4), torch.tensor([[1, 2], [3, 9]]), torch.ones(2, 2), "integer indices"),
    (lambda: modify.GELU("tanh"), X, (X, X), "expected a tensor"),
    (lambda: modify.Split(4, dim=-1), X, (X, X), "expected a tensor"),
    (lambda: modify.Rearrange("b t (h d) -> b h t d", h=2), X, torch.ones(2, 8), "3-d tensor"),
    (lambda: AffineLayerNorm(8, 1e-5, True, None, torch.float64), X, torch.ones(2, 7, dtype=torch.float64), "8"),
    (lambda: Pick(0, ("1.0", "1.1", 2), 2), (X, (X, X), X), (X, X, X), "has no element 1.0"),
    (lambda: Pick(2, 0), (X, X, X), (X, X), "has no element 2"),
    (lambda: CarryAdd(), (X, X, X[0]), (X, X[0]), "different shapes"),
    (lambda: modify.ScaledDotProductAttention(causal=True), (HEADS, HEADS, HEADS, torch.ones(0, dtype=torch.bool)),
     (HEADS, HEADS[0], HEADS), "one rank"),
]


@pytest.mark.parametrize("make, good, bad, refusal", WRITTEN_AS_ONE_CALL)
def test_a_leaf_is_written_as_its_torch_call_and_keeps_its_documented_errors(fresh_registry, make, good, bad, refusal):
    leaf = make()
    model = modify.Sequential(step=leaf, after=modify.Identity())
    model(good), model(good)
    assert written(model)
    source = straight_line._written[model][1].source.split("except")[0]
    assert ".forward(" not in source or "else" in source  # the torch call, forward only as a fallback
    result = model(good)
    expected = leaf.forward(good)
    for ours, theirs in zip(*(r if isinstance(r, tuple) else (r,) for r in (result, expected)), strict=True):
        assert torch.equal(ours, theirs) if isinstance(ours, torch.Tensor) else ours == theirs
    with pytest.raises((ModifyValueError, modify.ModifyTypeError), match=refusal) as error:
        model(bad)
    assert "'step'" in str(error.value)


def test_a_carried_sum_is_not_broadcast_by_the_written_function(fresh_registry):
    model = modify.Sequential(add=CarryAdd(), after=modify.Identity())
    same = (torch.ones(2, 3), torch.ones(2, 3))
    model(same), model(same)
    assert written(model)
    with pytest.raises(ModifyValueError, match="different shapes"):
        model((torch.ones(2, 3), torch.ones(3)))  # torch would broadcast this sum


def test_a_leaf_whose_forward_is_replaced_is_called_by_it(fresh_registry):
    linear = modify.Linear(3, 3)
    linear.forward = lambda x: x * 0  # on the instance: the written function must call it
    model = modify.Sequential(linear, modify.Identity())
    x = torch.ones(2, 3)
    model(x), model(x)
    assert written(model) and model(x).abs().sum() == 0


def test_a_leaf_expression_gives_way_to_torch_out_of_memory(fresh_registry, monkeypatch):
    original, failing, calls = torch.nn.functional.linear, [], []

    def linear(*args):
        calls.append(args)
        if failing:
            raise torch.OutOfMemoryError("no memory")
        return original(*args)

    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    model = modify.Sequential(step=modify.Linear(3, 3), after=modify.Identity())
    x = torch.ones(2, 3)
    model(x), model(x)
    assert written(model)
    failing.append(True)
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        model(x)
    assert len(calls) == 1  # not run again by the checked forward
