"""Runtime checks: bad values name the module path; set_checks; typeguard on constructors."""

from __future__ import annotations

import pickle
import re
import threading

import pytest
import torch
from primitive_cases import CASES, IDENTITY_LIKE, Case
from torch import nn

import modify
from modify.traits import Binary, Ternary, Tuple, Unary


def _nested(leaf: nn.Module) -> modify.Sequential:
    """``leaf`` at path ``blocks.0.op``."""
    return modify.Sequential(blocks=modify.Sequential(modify.Sequential(op=leaf)))


def test_parallel_names_the_path_and_the_counts():
    attn = modify.Parallel(modify.Identity(), modify.Identity(), modify.Identity())
    model = modify.Sequential(blocks=modify.Sequential(modify.Sequential(attn=attn)))
    with pytest.raises(
        ValueError, match=re.escape("Parallel at 'blocks.0.attn' got a tuple of 2 values for 3 branches")
    ):
        model((torch.zeros(1), torch.zeros(1)))
    with pytest.raises(
        TypeError, match=re.escape("Parallel at 'blocks.0.attn' expected a tuple of 3 values, got a tensor")
    ):
        model(torch.zeros(1))


def test_nested_tuple_mismatch_names_the_inner_parallel():
    model = modify.Parallel(outer=modify.Parallel(modify.Identity(), modify.Identity()), other=modify.Identity())
    with pytest.raises(ValueError, match=re.escape("Parallel at 'outer' got a tuple of 3 values for 2 branches")):
        model(((torch.zeros(1),) * 3, torch.zeros(1)))
    with pytest.raises(TypeError, match=re.escape("Parallel at 'outer' expected a tuple of 2 values")):
        model((torch.zeros(1), torch.zeros(1)))


def test_errors_at_the_root_say_root():
    with pytest.raises(ValueError, match=re.escape("Parallel at '<root>' got a tuple of 2 values for 1 branch")):
        modify.Parallel(modify.Identity())((torch.zeros(1), torch.zeros(1)))


def _wrong_values(case: Case, leaf: nn.Module):
    """Values of the wrong arity for ``leaf``, with the error each must raise."""
    x = torch.zeros(2, 3)
    if isinstance(leaf, Unary):
        return [((x, x), TypeError)]
    if isinstance(leaf, Binary):
        return [(x, TypeError), ((x, x, x), ValueError), ((x, 1.0), TypeError)]
    if isinstance(leaf, Ternary):
        return [(x, TypeError), ((x, x), ValueError)]
    assert isinstance(leaf, Tuple)
    return [(x, TypeError)]


CHECKED = [c for c in CASES if not isinstance(c.make(), IDENTITY_LIKE + (modify.Copy,))]


@pytest.mark.parametrize("case", CHECKED, ids=[c.id for c in CHECKED])
def test_every_leaf_rejects_a_value_of_the_wrong_arity_with_its_path(case: Case):
    leaf = case.make()
    for value, error in _wrong_values(case, leaf):
        with pytest.raises(error, match=re.escape(f"{type(leaf).__name__} at 'blocks.0.op'")):
            _nested(leaf)(value)


@pytest.mark.parametrize(
    ("leaf", "value", "message"),
    [
        (modify.Linear(4, 3), torch.zeros(2, 5), "expected last dimension 4, got a tensor of shape (2, 5)"),
        (modify.Conv2d(3, 4, 3), torch.zeros(1, 2, 5, 5), "expected (N, 3, ...)"),
        (modify.Embedding(5, 2), torch.zeros(3), "expected integer indices"),
        (modify.LayerNorm(4), torch.zeros(2, 5), "expected trailing shape (4,)"),
        (modify.RMSNorm(4), torch.zeros(2, 5), "expected trailing shape (4,)"),
        (modify.GroupNorm(2, 4), torch.zeros(2, 6), "expected (N, 4, *)"),
        (modify.BatchNorm2d(3), torch.zeros(2, 3, 4), "expected 4-d input with 3 channels"),
        (modify.ElementwiseAffine(3, dim=1), torch.zeros(2, 4, 5), "expected axes 1..1 of size (3,)"),
        (modify.RotaryEmbedding(4), torch.zeros(2, 3, 6), "expected (*, T, 4)"),
        (modify.Add(), (torch.zeros(2, 3), torch.zeros(3)), "operands of different shapes"),
        (modify.Index(2), (torch.zeros(1), torch.zeros(1)), "has no element 2"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_shape_errors_name_the_path_expected_and_got(leaf, value, message):
    with pytest.raises(ValueError if not isinstance(leaf, modify.Embedding) else TypeError) as info:
        _nested(leaf)(value)
    assert f"{type(leaf).__name__} at 'blocks.0.op'" in str(info.value) and message in str(info.value)


def test_torch_errors_inside_a_leaf_get_one_note_with_the_path():
    model = _nested(modify.Embedding(4, 2))  # ids past the table: a range check would cost O(n) per call
    with pytest.raises(IndexError) as info:
        model(torch.tensor([1, 7]))
    assert info.value.__notes__ == ["(raised inside Embedding at 'blocks.0.op')"]


def test_set_checks_false_skips_checks_and_torch_errors_appear():
    model = _nested(modify.Linear(4, 3))
    with modify.set_checks(False):
        assert not modify.checks_enabled()
        with pytest.raises(RuntimeError, match="cannot be multiplied") as info:
            model(torch.zeros(2, 5))
        assert not isinstance(info.value, modify.ModifyError)
        assert "(raised inside Linear at 'blocks.0.op')" in info.value.__notes__
        modify.Copy(True)  # constructor type checks are off too
    assert modify.checks_enabled()
    with pytest.raises(ValueError, match="expected last dimension 4"):
        model(torch.zeros(2, 5))


def test_set_checks_restores_the_previous_value_and_works_as_a_call():
    restore = modify.set_checks(False)
    try:
        assert not modify.checks_enabled()
        with modify.set_checks(True):
            assert modify.checks_enabled()
        assert not modify.checks_enabled()
    finally:
        restore.__exit__(None, None, None)
    assert modify.checks_enabled()
    with pytest.raises(TypeError, match="bool"):
        modify.set_checks(1)


def _in_thread(target) -> list:
    """Run ``target(record)`` in a thread; return what it recorded (exceptions included)."""
    seen: list = []

    def run():
        try:
            target(seen.append)
        except BaseException as error:  # noqa: BLE001 - reported to the test thread
            seen.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return [thread, seen]


def test_set_checks_belongs_to_the_calling_thread():
    turned_off, checked = threading.Event(), threading.Event()

    def other(record):
        modify.set_checks(False)  # a plain call, never restored: this thread only
        record(modify.checks_enabled())
        turned_off.set()
        checked.wait(5)

    thread, seen = _in_thread(other)
    assert turned_off.wait(5)
    assert modify.checks_enabled()
    with pytest.raises(ValueError, match="expected last dimension 4"):
        modify.Linear(4, 3)(torch.zeros(2, 5))
    checked.set()
    thread.join(5)
    assert seen == [False]
    assert modify.checks_enabled()


def test_set_checks_context_managers_interleaved_across_threads():
    """A enters, B enters, A exits, B exits: each thread sees only its own flag, both restored."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def thread_a(record):
        with modify.set_checks(False):
            a_in.set()
            b_in.wait(5)
            record(("A inside", modify.checks_enabled()))
        a_out.set()
        record(("A after", modify.checks_enabled()))

    def thread_b(record):
        a_in.wait(5)
        record(("B before", modify.checks_enabled()))
        with modify.set_checks(False):
            b_in.set()
            a_out.wait(5)
            record(("B inside", modify.checks_enabled()))
        record(("B after", modify.checks_enabled()))

    (ta, seen_a), (tb, seen_b) = _in_thread(thread_a), _in_thread(thread_b)
    ta.join(5), tb.join(5)
    assert seen_a == [("A inside", False), ("A after", True)]
    assert seen_b == [("B before", True), ("B inside", False), ("B after", True)]
    assert modify.checks_enabled()


def test_set_checks_flag_does_not_break_a_fullgraph_compile():
    model = modify.Sequential(modify.Linear(4, 3), modify.Copy(2), modify.Add())
    x = torch.randn(2, 4)
    expected = model(x)
    for flag in (True, False):
        with modify.set_checks(flag):
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            assert torch.equal(compiled(x), expected)
        torch._dynamo.reset()


def test_checks_are_off_while_torch_compile_traces():
    class Probe(modify.Leaf, Unary, modify.traits.ParamFree, modify.traits.Linear):
        def forward(self, x):
            return x + 1 if modify.checks_enabled() else x - 1

    x = torch.zeros(2)
    assert Probe()(x).tolist() == [1.0, 1.0]
    compiled = torch.compile(modify.Sequential(Probe()), backend="eager", fullgraph=True)
    assert compiled(x).tolist() == [-1.0, -1.0]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: modify.Linear(4.0, 3), "Linear: argument 'in_features' got float"),
        (lambda: modify.Linear(4, 3, bias="yes"), "Linear: argument 'bias' got str"),
        (lambda: modify.Conv2d(3, 4, kernel_size="3"), "Conv2d: argument 'kernel_size'"),
        (lambda: modify.Copy(True), "Copy: argument 'n' got bool"),
        (lambda: modify.Scale("2"), "Scale: argument 'c' got str"),
        (lambda: modify.Add(broadcast=1), "Add: argument 'broadcast' got int"),
        (lambda: modify.Sum(dim=1.0), "Sum: argument 'dim'"),
        (lambda: modify.Reshape(2, 3.0), "Reshape: argument 'shape[1]'"),
        (lambda: modify.Permute(0, "1"), "Permute: argument 'dims[1]'"),
        (lambda: modify.Rearrange("a b -> b a", a="2"), "Rearrange: argument 'axes_lengths['a']'"),
        (lambda: modify.Dropout(p="0.1"), "Dropout: argument 'p'"),
        (lambda: modify.RotaryEmbedding(8, scaling=[1]), "RotaryEmbedding: argument 'scaling'"),
        (lambda: modify.Residual(torch.relu), "Residual: argument 'block'"),
        (lambda: modify.ElementwiseAffine(3, dim=None), "ElementwiseAffine: argument 'dim'"),
    ],
)
def test_constructor_arguments_are_type_checked(make, fragment):
    with pytest.raises(TypeError, match=re.escape(fragment)):
        make()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: modify.Copy(0), "n >= 1"),
        (lambda: modify.Dropout(1.0), "[0, 1)"),
        (lambda: modify.GELU("fast"), "'none' or 'tanh'"),
        (lambda: modify.Reshape(-1, -1), "at most one -1"),
        (lambda: modify.Conv2d(3, 4, (3, 3, 3)), "kernel_size needs 1 or 2 values"),
        (lambda: modify.Conv2d(3, 4, 3, groups=2), "not divisible by groups"),
        (lambda: modify.Conv1d(3, 4, 3, stride=2, padding="same"), "strided"),
        (lambda: modify.Conv1d(3, 4, 3, padding_mode="mirror"), "padding_mode"),
        (lambda: modify.GroupNorm(3, 4), "not divisible"),
        (lambda: modify.Embedding(5, 2, padding_idx=5), "out of range"),
        (lambda: modify.ScaledDotProductAttention(dropout=1.5), "[0, 1)"),
    ],
)
def test_constructor_values_are_checked(make, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make()


def test_errors_pickle_with_their_path_and_notes():
    model = _nested(modify.Parallel(modify.Identity(), modify.Identity()))
    with pytest.raises(modify.ModifyValueError) as info:
        model((torch.zeros(1),) * 3)
    info.value.add_note("extra")
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is modify.ModifyValueError and isinstance(clone, ValueError)
    assert str(clone) == str(info.value) == "Parallel at 'blocks.0.op' got a tuple of 3 values for 2 branches"
    assert clone.path == ["blocks", "0", "op"] and clone.__notes__ == ["extra"]


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: modify.Sequential(**{"a.b": modify.Identity()}), ValueError, "Sequential: child name 'a.b' is dotted"),
        (lambda: modify.Parallel(**{"": modify.Identity()}), ValueError, "Parallel: child name '' is empty"),
        (lambda: modify.Sequential(training=modify.Identity()), ValueError, "child name 'training' is an attribute of Sequential"),
        (lambda: modify.Parallel(forward=modify.Identity()), ValueError, "child name 'forward' is an attribute of Parallel"),
        (lambda: modify.Sequential(rebuilt=modify.Identity()), ValueError, "child name 'rebuilt' is an attribute of Sequential"),
    ],
)
def test_combinators_refuse_child_names_that_cannot_be_paths(make, error, fragment):
    with pytest.raises(error) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: modify.Linear(4), "Linear() missing a required argument: 'out_features'"),
        (lambda: modify.Conv1d(2, 4), "Conv1d() missing a required argument: 'kernel_size'"),
        (lambda: modify.Copy(), "Copy() missing a required argument: 'n'"),
        (lambda: modify.Scale(1.0, 2.0), "Scale() too many positional arguments"),
    ],
)
def test_argument_binding_errors_name_the_callable(make, fragment):
    with pytest.raises(TypeError) as info:
        make()
    assert str(info.value) == fragment
