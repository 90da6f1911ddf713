"""``torch.compile(model, fullgraph=True)`` on composed models: no graph breaks, equal results.

Graph breaks are counted with ``torch._dynamo.explain``; outputs and gradients of the compiled
model (backend ``eager``, which traces with dynamo but runs the captured graph as is, to keep the
tests fast) are compared with the uncompiled model's. One test runs the default inductor backend
on a small model (its cache goes to ``build/inductor-cache`` as in the Makefile).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / "build" / "inductor-cache"))

import modify  # noqa: E402
from modify import (  # noqa: E402
    AdaptiveAvgPool2d, Add, AvgPool2d, BatchNorm2d, Breakpoint, Cat, Conv1d, Conv2d, Copy, Div, Dropout,
    ElementwiseAffine, Embedding, Exp, Flatten, Fork, GELU, GroupNorm, Identity, Index, LayerNorm, Linear,
    LogSoftmax, MatMul, Max, MaxPool2d, Mean, Mul, Parallel, Permute, Rearrange, ReLU, Reshape, Residual,
    RMSNorm, RotaryEmbedding, Scale, ScaledDotProductAttention, Sequential, Sigmoid, SiLU, Softmax, Split,
    Stack, Sub, Sum, Tanh, Transpose,
)

from helpers import assert_close, assert_state_equal, state_snapshot  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache entries (or recompile limits) carried over."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graph_breaks(model: nn.Module, x) -> int:
    """Graph breaks dynamo reports when tracing ``model(x)``."""
    return torch._dynamo.explain(model)(x).graph_break_count


def float_leaves(value) -> list[torch.Tensor]:
    if isinstance(value, tuple):
        return [t for v in value for t in float_leaves(v)]
    return [value] if value.is_floating_point() else []


def run_with_grads(model: nn.Module, x) -> tuple[object, list[torch.Tensor | None]]:
    """Output and parameter gradients of ``sum(out.sum() for every float output)``."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    sum(t.sum() for t in float_leaves(out)).backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out, grads


def assert_compiles_equal(model: nn.Module, x, atol: float = 1e-5) -> None:
    """No graph break; compiled (fullgraph, eager backend) output and gradients equal eager's."""
    assert graph_breaks(model, x) == 0
    expected, expected_grads = run_with_grads(model, x)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    actual, actual_grads = run_with_grads(compiled, x)
    assert_close(actual, expected, atol=atol)
    assert len(actual_grads) == len(expected_grads)
    for a, e in zip(actual_grads, expected_grads):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(a, e, atol=atol)


# Small models built from primitives, together covering every leaf class that computes
# (the debug leaves print, which is a graph break by design; Breakpoint is skipped when compiling).
C, H, T, V = 16, 4, 6, 32


def gpt_like() -> Sequential:
    attention = Sequential(
        Linear(C, 3 * C),
        Split(C, dim=-1),
        Parallel(*[Rearrange("b t (h d) -> b h t d", h=H) for _ in range(3)]),
        ScaledDotProductAttention(causal=True),
        Rearrange("b h t d -> b t (h d)"),
        Linear(C, C),
    )
    mlp = Sequential(Linear(C, 4 * C), GELU("tanh"), Linear(4 * C, C), Dropout(0.1))
    return Sequential(
        Embedding(V, C),
        Residual(Sequential(LayerNorm(C), ElementwiseAffine(C), attention)),
        Residual(Sequential(LayerNorm(C), ElementwiseAffine(C), mlp)),
        LayerNorm(C),
        ElementwiseAffine(C),
        Linear(C, V, bias=False),
    )


def llama_like() -> Sequential:
    head = C // H
    rope = RotaryEmbedding(head)
    qkv = Fork(
        Sequential(Linear(C, C, bias=False), Rearrange("b t (h d) -> b h t d", h=H), rope),
        Sequential(Linear(C, C // 2, bias=False), Rearrange("b t (h d) -> b h t d", h=H // 2), rope),
        Sequential(Linear(C, C // 2, bias=False), Rearrange("b t (h d) -> b h t d", h=H // 2)),
    )
    attention = Sequential(qkv, ScaledDotProductAttention(causal=True), Rearrange("b h t d -> b t (h d)"))
    swiglu = Sequential(Fork(Sequential(Linear(C, 2 * C), SiLU()), Linear(C, 2 * C)), Mul(), Linear(2 * C, C))
    return Sequential(
        Embedding(V, C),
        Residual(Sequential(RMSNorm(C, eps=1e-6), ElementwiseAffine(C, bias=False), attention, Linear(C, C))),
        Residual(Sequential(RMSNorm(C, eps=1e-6), ElementwiseAffine(C, bias=False), swiglu)),
        RMSNorm(C, eps=1e-6),
        Linear(C, V),
    )


def resnet_like() -> Sequential:
    block = Residual(Sequential(Conv2d(8, 8, 3, padding=1), BatchNorm2d(8), ElementwiseAffine(8, dim=1), ReLU()))
    return Sequential(
        Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        BatchNorm2d(8),
        ElementwiseAffine(8, dim=1),
        ReLU(),
        MaxPool2d(2),
        block,
        AvgPool2d(1),
        GroupNorm(2, 8),
        AdaptiveAvgPool2d(1),
        Flatten(1),
        Linear(8, 5),
    )


def plumbing() -> Sequential:
    """Tuples in and out: every arithmetic, reduction and restructuring leaf, and opaque modules."""
    pair = Fork(Sequential(Exp(), Tanh()), Sequential(Sigmoid(), Scale(2.0)))
    arithmetic = Fork(
        Sequential(pair, Add()),
        Sequential(pair, Sub()),
        Sequential(pair, Mul()),
        Sequential(pair, Div()),
    )
    return Sequential(
        nn.Linear(4, 6),
        Reshape(-1, 2, 3),
        Conv1d(2, 2, 1),
        Transpose(-1, -2),
        Permute(0, 2, 1),
        arithmetic,
        Parallel(Identity(), Softmax(), LogSoftmax(), nn.ReLU()),
        Fork(Cat(dim=-1), Stack(), Index(2)),
        Parallel(Sum(dim=-1), Mean(dim=(0, 1)), Sequential(Copy(2), Parallel(Identity(), Transpose(-1, -2)), MatMul(), Max(dim=-1, keepdim=True))),
        Parallel(Dropout(0.5), Identity(), nn.Identity()),
    )


CASES = {
    "gpt_like": (gpt_like, lambda: torch.randint(0, V, (2, T))),
    "llama_like": (llama_like, lambda: torch.randint(0, V, (2, T))),
    "resnet_like": (resnet_like, lambda: torch.randn(2, 3, 16, 16)),
    "plumbing": (plumbing, lambda: torch.randn(3, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_composed_models_compile_without_graph_breaks(name):
    make, make_input = CASES[name]
    model, x = make().eval(), make_input()
    assert_compiles_equal(model, x)


def test_training_mode_compiles_with_batchnorm_buffers_updated_as_in_eager():
    eager, x = resnet_like().train(), torch.randn(4, 3, 8, 8)
    assert graph_breaks(copy.deepcopy(eager), x) == 0
    compiled_model = copy.deepcopy(eager)
    assert_close(torch.compile(compiled_model, backend="eager", fullgraph=True)(x), eager(x), atol=1e-5)
    assert_state_equal(compiled_model, state_snapshot(eager))


def test_runtime_checks_leave_nothing_in_the_compiled_graph():
    model, x = gpt_like().eval(), torch.randint(0, V, (2, T))

    def ops(flag: bool) -> list[str]:
        torch._dynamo.reset()
        with modify.set_checks(flag):
            graphs = torch._dynamo.explain(model)(x).graphs
        nodes = [node for graph in graphs for node in graph.graph.nodes]
        return [str(node.target) for node in nodes if node.op in ("call_function", "call_method")]

    with_checks = ops(True)
    assert "<built-in function linear>" in with_checks
    assert with_checks == ops(False)



def test_breakpoint_is_skipped_while_compiling():
    """Eagerly it would stop in pdb (and fail here, as stdin is captured); compiled it is a no-op."""
    model, x = Sequential(Linear(3, 3), Breakpoint(), ReLU()), torch.randn(2, 3)
    assert graph_breaks(model, x) == 0
    expected = model[2](model[0](x))
    assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), expected)


# Inductor imports a module that still uses torch.jit.script_method (torch's own deprecation).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_compiles_a_small_model_to_equal_outputs_and_gradients():
    """The default backend, once: generated kernels, not only the traced graph."""
    model, x = gpt_like().eval(), torch.randint(0, V, (2, T))
    expected, expected_grads = run_with_grads(model, x)
    actual, actual_grads = run_with_grads(torch.compile(model, fullgraph=True), x)
    assert_close(actual, expected, atol=1e-5)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        assert_close(a, e, atol=1e-5)
