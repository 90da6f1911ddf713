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
    ElementwiseAffine, Exp, Flatten, Fork, GroupNorm, Identity, Index, Linear, LogSoftmax, MatMul, Max,
    MaxPool2d, Mean, Mul, Parallel, Permute, Rearrange, ReLU, Reshape, Residual, Scale, Sequential, Sigmoid,
    Softmax, Stack, Sub, Sum, Tanh, Transpose,
)
from modify.models import GPT, GPTConfig, Llama, LlamaConfig, ResNet, ResNetConfig  # noqa: E402

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


def run_with_grads(model: nn.Module, x, leaves: list[torch.Tensor]) -> tuple[object, tuple[torch.Tensor, ...]]:
    """Output, and gradients for ``leaves`` of the sum of every float output.

    The graph is kept: a mutable sibling's assigned weight is a non-leaf made once, used by each run.
    """
    out = model(x)
    loss = sum(t.sum() for t in float_leaves(out))
    return out, torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)


def assert_compiles_equal(model: nn.Module, x, leaves: list[torch.Tensor] | None = None, atol: float = 1e-5) -> None:
    """No graph break; compiled (fullgraph, eager backend) output and gradients equal eager's.

    ``leaves`` are the tensors differentiated (default: the model's trainable parameters).
    """
    leaves = [p for p in model.parameters() if p.requires_grad] if leaves is None else leaves
    assert graph_breaks(model, x) == 0
    expected, expected_grads = run_with_grads(model, x, leaves)
    actual, actual_grads = run_with_grads(torch.compile(model, backend="eager", fullgraph=True), x, leaves)
    assert_close(actual, expected, atol=atol)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(a, e, atol=atol)


# The models, tiny, and their siblings: every rewriter's output must compile as the model does.
V, T = 32, 8


def gpt() -> nn.Module:
    return GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=1, n_head=2, n_embd=16))


def llama() -> nn.Module:
    config = LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16,
    )
    return Llama(config)


def resnet() -> nn.Module:
    return ResNet(ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic", num_classes=5))


MODELS = {
    "gpt": (gpt, lambda: torch.randint(0, V, (2, T))),
    "llama": (llama, lambda: torch.randint(0, V, (2, T))),
    "resnet": (resnet, lambda: torch.randn(2, 3, 32, 32)),
}


def lora_sibling(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor]]:
    adapted = modify.lora(model, rank=2)
    with torch.no_grad():  # non-zero B: the adapters change the output
        for p in modify.lora_parameters(adapted):
            p.normal_()
    return adapted, modify.lora_parameters(adapted)


def mutable_sibling(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor]]:
    """A mutable sibling whose first Linear/Conv2d weight is a non-leaf tensor made from ``source``."""
    sibling = modify.mutable(model)
    layer = next(m for m in sibling.modules() if isinstance(m, (Linear, Conv2d)))
    source = layer.weight.detach().clone().requires_grad_()
    layer.weight = source * 1.5
    return sibling, [source]


SIBLINGS = {
    "base": lambda model: (model, None),
    "lora": lora_sibling,
    "mutable": mutable_sibling,
    "flat": lambda model: (modify.flat(copy.deepcopy(model)), None),
    "fuse": lambda model: (modify.fuse(model), None),
}


# Dynamo reads ``.grad`` of every tensor it lifts into the graph; for the non-leaf weight of a
# mutable sibling that is torch's own "non-leaf .grad" UserWarning (an error under our filters).
NON_LEAF_GRAD = "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"


@pytest.mark.parametrize(
    "sibling", [pytest.param(s, marks=pytest.mark.filterwarnings(NON_LEAF_GRAD)) if s == "mutable" else s for s in SIBLINGS]
)
@pytest.mark.parametrize("name", list(MODELS))
def test_models_and_their_siblings_compile_without_graph_breaks(name, sibling):
    make, make_input = MODELS[name]
    model, leaves = SIBLINGS[sibling](make().eval())
    assert_compiles_equal(model, make_input(), leaves)


# Leaves the models do not use, composed with tuples in and out.
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
    """Every arithmetic, reduction and restructuring leaf, and opaque ``torch.nn`` modules."""
    pair = Fork(Sequential(Exp(), Tanh()), Sequential(Sigmoid(), Scale(2.0)))
    arithmetic = Fork(*(Sequential(pair, op) for op in (Add(), Sub(), Mul(), Div())))
    matmul = Sequential(Copy(2), Parallel(Identity(), Transpose(-1, -2)), MatMul(), Max(dim=-1, keepdim=True))
    return Sequential(
        nn.Linear(4, 6),
        Reshape(-1, 2, 3),
        Conv1d(2, 2, 1),
        Transpose(-1, -2),
        Permute(0, 2, 1),
        arithmetic,
        Parallel(Identity(), Softmax(), LogSoftmax(), nn.ReLU()),
        Fork(Cat(dim=-1), Stack(), Index(2)),
        Parallel(Sum(dim=-1), Mean(dim=(0, 1)), matmul),
        Parallel(Dropout(0.5), Rearrange("a b -> b a"), nn.Identity()),
    )


@pytest.mark.parametrize("make, shape", [(resnet_like, (2, 3, 16, 16)), (plumbing, (3, 4))], ids=["conv", "plumbing"])
def test_other_leaves_compile_without_graph_breaks(make, shape):
    assert_compiles_equal(make().eval(), torch.randn(shape))


def test_training_mode_compiles_with_batchnorm_buffers_updated_as_in_eager():
    eager, x = resnet_like().train(), torch.randn(4, 3, 8, 8)
    assert graph_breaks(copy.deepcopy(eager), x) == 0
    compiled_model = copy.deepcopy(eager)
    assert_close(torch.compile(compiled_model, backend="eager", fullgraph=True)(x), eager(x), atol=1e-5)
    assert_state_equal(compiled_model, state_snapshot(eager))


def test_breakpoint_is_skipped_while_compiling():
    """Eagerly it would stop in pdb (and fail here, as stdin is captured); compiled it is a no-op."""
    model, x = Sequential(Linear(3, 3), Breakpoint(), ReLU()), torch.randn(2, 3)
    assert graph_breaks(model, x) == 0
    assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), model[2](model[0](x)))


def test_runtime_checks_leave_nothing_in_the_compiled_graph():
    model, x = gpt().eval(), torch.randint(0, V, (2, T))

    def ops(flag: bool) -> list[str]:
        torch._dynamo.reset()
        with modify.set_checks(flag):
            graphs = torch._dynamo.explain(model)(x).graphs
        nodes = [node for graph in graphs for node in graph.graph.nodes]
        return [str(node.target) for node in nodes if node.op in ("call_function", "call_method")]

    with_checks = ops(True)
    assert "<built-in function linear>" in with_checks
    assert with_checks == ops(False)


# Inductor imports a module that still uses torch.jit.script_method (torch's own deprecation).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_compiles_a_small_model_to_equal_outputs_and_gradients():
    """The default backend, once: generated kernels, not only the traced graph."""
    model, x = gpt().eval(), torch.randint(0, V, (2, T))
    leaves = list(model.parameters())
    expected, expected_grads = run_with_grads(model, x, leaves)
    actual, actual_grads = run_with_grads(torch.compile(model, fullgraph=True), x, leaves)
    assert_close(actual, expected, atol=1e-5)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        assert_close(a, e, atol=1e-5)
