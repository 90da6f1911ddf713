"""The table of primitive cases: each leaf with an input and an independent torch reference.

A reference is built from our module (so it can use the same weights): either a ``torch.nn``
module with our ``state_dict`` loaded strictly (keys must be equal), or a plain function of the
input written with torch functions. ``tests/test_primitives.py`` compares outputs, gradients and
state; ``tests/test_traits.py`` checks the traits on the same cases; ``tests/test_checks.py``
feeds them wrong values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import modify

Value = torch.Tensor | tuple
# Leaves that pass any value through (documented as Unary all the same).
IDENTITY_LIKE = (modify.Identity, modify.Dropout, modify.Print, modify.PrintShape, modify.Breakpoint)
# Leaves whose output is not differentiable (integer positions): tested in tests/test_structure.py.
INTEGER_OUTPUT = (modify.Positions,)


@dataclass(frozen=True)
class Case:
    """One primitive configuration.

    Attributes:
        id: the test id.
        make: builds our module.
        inputs: a float32 (or int64) input value from a generator.
        reference: ``reference(ours)`` is a ``torch.nn.Module`` or a function of the input.
        train: run in training mode.
        differentiable: the output is differentiable in the float inputs and parameters.
        shows_nonlinearity: a ``NonLinear`` leaf visibly breaks the affine law on random inputs
            (``False`` for batch norm in eval mode, which is affine there).
    """

    id: str
    make: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Value]
    reference: Callable[[nn.Module], Callable]
    train: bool = False
    differentiable: bool = True
    shows_nonlinearity: bool = True


def randn(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda gen: torch.randn(shape, generator=gen)


def randn_pair(*shape: int) -> Callable[[torch.Generator], tuple]:
    return lambda gen: (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


def positive_pair(*shape: int) -> Callable[[torch.Generator], tuple]:
    """Denominators kept away from zero."""
    return lambda gen: (torch.randn(shape, generator=gen), torch.rand(shape, generator=gen) + 0.5)


def ints(high: int, *shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda gen: torch.randint(high, shape, generator=gen)


def fn(f: Callable) -> Callable[[nn.Module], Callable]:
    """A reference that is a fixed function of the input."""
    return lambda ours: f


def torch_nn(factory: Callable[[], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """A ``torch.nn`` reference with our state_dict loaded strictly (so keys must be equal)."""

    def build(ours: nn.Module) -> nn.Module:
        reference = factory()
        reference.load_state_dict(ours.state_dict(), strict=True)
        return reference

    return build


def affine_reference(view: tuple[int, ...]) -> Callable[[nn.Module], Callable]:
    """``x * w + b`` with the parameters reshaped to ``view`` by hand."""

    def build(ours: nn.Module) -> Callable:
        bias = 0 if ours.bias is None else ours.bias.reshape(view)
        return lambda x: x * ours.weight.reshape(view) + bias

    return build


def attention_reference(causal: bool) -> Callable[[nn.Module], Callable]:
    """``softmax(q k^T / sqrt(d)) v`` written out, kv heads repeated for grouped queries."""

    def attend(x: tuple) -> torch.Tensor:
        q, k, v = x
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    return lambda ours: attend


def rotate_half_reference(ours: nn.Module) -> Callable:
    """Hugging Face Llama's ``apply_rotary_pos_emb`` written out: ``x cos + rotate_half(x) sin``."""

    def rope(x: torch.Tensor) -> torch.Tensor:
        dim, positions = x.shape[-1], torch.arange(x.shape[-2], dtype=torch.float64)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        rotate_half = torch.cat((-x2, x1), dim=-1)
        return x * emb.cos().to(x.dtype) + rotate_half * emb.sin().to(x.dtype)

    return rope


def qkv(heads: int, kv_heads: int, length: int = 5, dim: int = 4) -> Callable[[torch.Generator], tuple]:
    def make(gen: torch.Generator) -> tuple:
        q = torch.randn(2, heads, length, dim, generator=gen)
        k = torch.randn(2, kv_heads, length, dim, generator=gen)
        v = torch.randn(2, kv_heads, length, dim, generator=gen)
        return q, k, v

    return make


def _elementwise() -> list[Case]:
    x = randn(3, 4)
    return [
        Case("Identity", modify.Identity, x, fn(lambda x: x)),
        Case("Identity-tuple", modify.Identity, randn_pair(2, 3), fn(lambda x: x)),
        Case("Scale", lambda: modify.Scale(-1.5), x, fn(lambda x: torch.mul(x, -1.5))),
        Case("Function", lambda: modify.Function(torch.sin, name="sin"), x, fn(torch.sin)),
        Case("ReLU", modify.ReLU, x, fn(nn.ReLU())),
        Case("GELU", modify.GELU, x, fn(nn.GELU())),
        Case("GELU-tanh", lambda: modify.GELU("tanh"), x, fn(nn.GELU(approximate="tanh"))),
        Case("SiLU", modify.SiLU, x, fn(nn.SiLU())),
        Case("Tanh", modify.Tanh, x, fn(nn.Tanh())),
        Case("Sigmoid", modify.Sigmoid, x, fn(nn.Sigmoid())),
        Case("Exp", modify.Exp, x, fn(torch.exp)),
        Case("Softmax", modify.Softmax, x, fn(nn.Softmax(dim=-1))),
        Case("Softmax-dim0", lambda: modify.Softmax(0), x, fn(nn.Softmax(dim=0))),
        Case("LogSoftmax", modify.LogSoftmax, x, fn(nn.LogSoftmax(dim=-1))),
        Case("Dropout-eval", lambda: modify.Dropout(0.5), x, fn(nn.Dropout(0.5).eval())),
        Case("Dropout-train", lambda: modify.Dropout(0.5), x, fn(nn.Dropout(0.5)), train=True),
        Case(
            "Dropout-train-tuple",
            lambda: modify.Dropout(0.3),
            randn_pair(2, 3),
            fn(lambda x: (F.dropout(x[0], 0.3), F.dropout(x[1], 0.3))),
            train=True,
        ),
        Case("Print", lambda: modify.Print("x"), x, fn(lambda x: x)),
        Case("PrintShape", modify.PrintShape, randn_pair(2, 3), fn(lambda x: x)),
        Case("Breakpoint-disabled", lambda: modify.Breakpoint(enabled=False), x, fn(lambda x: x)),
    ]


def _arithmetic() -> list[Case]:
    return [
        Case("Add", modify.Add, randn_pair(2, 3), fn(lambda x: torch.add(*x))),
        Case(
            "Add-broadcast",
            lambda: modify.Add(broadcast=True),
            lambda gen: (torch.randn(2, 3, generator=gen), torch.randn(3, generator=gen)),
            fn(lambda x: torch.add(*x)),
        ),
        Case("Sub", modify.Sub, randn_pair(2, 3), fn(lambda x: torch.sub(*x))),
        Case("Mul", modify.Mul, randn_pair(2, 3), fn(lambda x: torch.mul(*x))),
        Case("Div", modify.Div, positive_pair(2, 3), fn(lambda x: torch.div(*x))),
        Case(
            "MatMul",
            modify.MatMul,
            lambda gen: (torch.randn(2, 3, 4, generator=gen), torch.randn(2, 4, 5, generator=gen)),
            fn(lambda x: torch.bmm(*x)),
        ),
    ]


def _structure() -> list[Case]:
    x = randn(2, 3, 4)
    return [
        Case("Copy", lambda: modify.Copy(3), x, fn(lambda x: (x, x, x))),
        Case("Reshape", lambda: modify.Reshape(6, -1), x, fn(lambda x: x.view(6, 4))),
        Case("Flatten", modify.Flatten, x, fn(lambda x: x.view(-1))),
        Case("Flatten-1", lambda: modify.Flatten(1), x, fn(nn.Flatten())),
        Case("Transpose", lambda: modify.Transpose(0, 2), x, fn(lambda x: x.transpose(2, 0))),
        Case("Permute", lambda: modify.Permute(2, 0, 1), x, fn(lambda x: x.permute(2, 0, 1))),
        Case(
            "Rearrange",
            lambda: modify.Rearrange("b t (h d) -> b h t d", h=2),
            x,
            fn(lambda x: x.view(2, 3, 2, 2).permute(0, 2, 1, 3)),
        ),
        Case("Split", lambda: modify.Split(2, dim=-1), x, fn(lambda x: (x[..., :2], x[..., 2:]))),
        Case("Split-sections", lambda: modify.Split([1, 2], dim=1), x, fn(lambda x: (x[:, :1], x[:, 1:]))),
        Case(
            "Cat",
            lambda: modify.Cat(dim=1),
            lambda gen: (torch.randn(2, 1, generator=gen), torch.randn(2, 3, generator=gen)),
            fn(lambda x: torch.cat(x, 1)),
        ),
        Case("Stack", modify.Stack, randn_pair(2, 3), fn(lambda x: torch.stack(x))),
        Case("Index", lambda: modify.Index(1), randn_pair(2, 3), fn(lambda x: x[1])),
        Case("Index-negative", lambda: modify.Index(-2), randn_pair(2, 3), fn(lambda x: x[0])),
    ]


def _reductions() -> list[Case]:
    x = randn(2, 3, 4)
    return [
        Case("Sum", modify.Sum, x, fn(torch.sum)),
        Case("Sum-dim", lambda: modify.Sum(dim=1), x, fn(lambda x: x.sum(1))),
        Case(
            "Sum-dims-keepdim",
            lambda: modify.Sum(dim=(0, 2), keepdim=True),
            x,
            fn(lambda x: x.sum((0, 2), keepdim=True)),
        ),
        Case("Mean", modify.Mean, x, fn(torch.mean)),
        Case("Mean-dim", lambda: modify.Mean(dim=-1, keepdim=True), x, fn(lambda x: x.mean(-1, keepdim=True))),
        Case("Max", modify.Max, x, fn(torch.max)),
        Case("Max-dim", lambda: modify.Max(dim=1), x, fn(lambda x: x.max(1).values)),
        Case(
            "MaxPool2d",
            lambda: modify.MaxPool2d(3, stride=2, padding=1),
            randn(2, 3, 6, 6),
            fn(nn.MaxPool2d(3, stride=2, padding=1)),
        ),
        Case("AvgPool2d", lambda: modify.AvgPool2d(2), randn(2, 3, 6, 6), fn(nn.AvgPool2d(2))),
        Case(
            "AvgPool2d-pad",
            lambda: modify.AvgPool2d(3, 2, 1, count_include_pad=False),
            randn(2, 3, 5, 5),
            fn(nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        ),
        Case(
            "AdaptiveAvgPool2d",
            lambda: modify.AdaptiveAvgPool2d((2, 3)),
            randn(2, 3, 5, 7),
            fn(nn.AdaptiveAvgPool2d((2, 3))),
        ),
    ]


def _norms() -> list[Case]:
    bn1 = lambda: nn.BatchNorm1d(3, affine=False)  # noqa: E731
    bn2 = lambda: nn.BatchNorm2d(3, affine=False, momentum=None)  # noqa: E731
    return [
        Case("LayerNorm", lambda: modify.LayerNorm(4), randn(2, 3, 4), fn(nn.LayerNorm(4, elementwise_affine=False))),
        Case(
            "LayerNorm-2d",
            lambda: modify.LayerNorm((3, 4), eps=1e-3),
            randn(2, 3, 4),
            fn(nn.LayerNorm((3, 4), eps=1e-3, elementwise_affine=False)),
        ),
        Case("RMSNorm", lambda: modify.RMSNorm(4), randn(2, 3, 4), fn(nn.RMSNorm(4, elementwise_affine=False))),
        Case(
            "RMSNorm-eps",
            lambda: modify.RMSNorm(4, eps=1e-6),
            randn(2, 3, 4),
            fn(nn.RMSNorm(4, eps=1e-6, elementwise_affine=False)),
        ),
        Case("GroupNorm", lambda: modify.GroupNorm(2, 4), randn(2, 4, 3), fn(nn.GroupNorm(2, 4, affine=False))),
        Case("BatchNorm1d-train", lambda: modify.BatchNorm1d(3), randn(5, 3), torch_nn(bn1), train=True),
        Case("BatchNorm1d-train-3d", lambda: modify.BatchNorm1d(3), randn(5, 3, 2), torch_nn(bn1), train=True),
        Case("BatchNorm1d-eval", lambda: modify.BatchNorm1d(3), randn(5, 3), torch_nn(bn1), shows_nonlinearity=False),
        Case(
            "BatchNorm2d-train",
            lambda: modify.BatchNorm2d(3, momentum=None),
            randn(4, 3, 2, 2),
            torch_nn(bn2),
            train=True,
        ),
        Case(
            "BatchNorm2d-eval",
            lambda: modify.BatchNorm2d(3, momentum=None),
            randn(4, 3, 2, 2),
            torch_nn(bn2),
            shows_nonlinearity=False,
        ),
        Case(
            "BatchNorm1d-no-stats",
            lambda: modify.BatchNorm1d(3, track_running_stats=False),
            randn(5, 3),
            torch_nn(lambda: nn.BatchNorm1d(3, affine=False, track_running_stats=False).eval()),
        ),
        Case(
            "ElementwiseAffine", lambda: randomised(modify.ElementwiseAffine(4)), randn(2, 3, 4), affine_reference((4,))
        ),
        Case(
            "ElementwiseAffine-dim1",
            lambda: randomised(modify.ElementwiseAffine(3, dim=1)),
            randn(2, 3, 2, 2),
            affine_reference((3, 1, 1)),
        ),
        Case(
            "ElementwiseAffine-2d-nobias",
            lambda: randomised(modify.ElementwiseAffine((3, 4), bias=False)),
            randn(2, 3, 4),
            affine_reference((3, 4)),
        ),
    ]


def _layers() -> list[Case]:
    return [
        Case("Linear", lambda: modify.Linear(4, 3), randn(2, 5, 4), torch_nn(lambda: nn.Linear(4, 3))),
        Case(
            "Linear-nobias",
            lambda: modify.Linear(4, 3, bias=False),
            randn(2, 4),
            torch_nn(lambda: nn.Linear(4, 3, bias=False)),
        ),
        Case(
            "Conv1d",
            lambda: modify.Conv1d(2, 4, 3, padding=1),
            randn(2, 2, 7),
            torch_nn(lambda: nn.Conv1d(2, 4, 3, padding=1)),
        ),
        Case(
            "Conv1d-groups-circular",
            lambda: modify.Conv1d(4, 4, 3, padding=2, groups=2, padding_mode="circular"),
            randn(2, 4, 6),
            torch_nn(lambda: nn.Conv1d(4, 4, 3, padding=2, groups=2, padding_mode="circular")),
        ),
        Case(
            "Conv2d",
            lambda: modify.Conv2d(3, 4, 3, stride=2, padding=1),
            randn(2, 3, 6, 6),
            torch_nn(lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1)),
        ),
        Case(
            "Conv2d-same-reflect",
            lambda: modify.Conv2d(2, 2, (2, 3), padding="same", dilation=(1, 2), padding_mode="reflect", bias=False),
            randn(1, 2, 6, 7),
            torch_nn(
                lambda: nn.Conv2d(2, 2, (2, 3), padding="same", dilation=(1, 2), padding_mode="reflect", bias=False)
            ),
        ),
        Case("Conv2d-unbatched", lambda: modify.Conv2d(2, 3, 1), randn(2, 4, 4), torch_nn(lambda: nn.Conv2d(2, 3, 1))),
        Case("Embedding", lambda: modify.Embedding(10, 4), ints(10, 2, 5), torch_nn(lambda: nn.Embedding(10, 4))),
        Case(
            "Embedding-padding",
            lambda: modify.Embedding(10, 4, padding_idx=0),
            lambda gen: torch.tensor([[0, 3, 0, 9]]),
            torch_nn(lambda: nn.Embedding(10, 4, padding_idx=0)),
            differentiable=False,
        ),  # padding row: no grad by design
    ]


def _attention() -> list[Case]:
    return [
        Case("SDPA", modify.ScaledDotProductAttention, qkv(2, 2), attention_reference(causal=False)),
        Case(
            "SDPA-causal",
            lambda: modify.ScaledDotProductAttention(causal=True),
            qkv(2, 2),
            attention_reference(causal=True),
        ),
        Case(
            "SDPA-gqa-causal",
            lambda: modify.ScaledDotProductAttention(causal=True),
            qkv(4, 2),
            attention_reference(causal=True),
        ),
        Case("RotaryEmbedding", lambda: modify.RotaryEmbedding(6), randn(2, 2, 5, 6), rotate_half_reference),
    ]


def _fused() -> list[Case]:
    """The leaves ``modify.fuse`` builds, each against the ``torch.nn`` module it computes."""
    return [
        Case("AffineLayerNorm", lambda: randomised(modify.AffineLayerNorm(4)), randn(2, 3, 4), torch_nn(lambda: nn.LayerNorm(4))),
        Case(
            "AffineRMSNorm",
            lambda: randomised(modify.AffineRMSNorm(4, eps=1e-6)),
            randn(2, 3, 4),
            torch_nn(lambda: nn.RMSNorm(4, eps=1e-6)),
        ),
        Case("AffineGroupNorm", lambda: randomised(modify.AffineGroupNorm(2, 4)), randn(2, 4, 3), torch_nn(lambda: nn.GroupNorm(2, 4))),
        Case(
            "ScaledLinear",
            lambda: modify.ScaledLinear(4, 3, 0.5),
            randn(2, 5, 4),
            lambda ours: lambda x: 0.5 * F.linear(x, ours.weight, ours.bias),
        ),
    ]


@torch.no_grad()
def randomised(module: nn.Module) -> nn.Module:
    """Give default-initialised (ones/zeros) parameters random values, so tests see them."""
    gen = torch.Generator().manual_seed(1)
    for parameter in module.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=gen))
    return module


CASES: list[Case] = [
    *_elementwise(),
    *_arithmetic(),
    *_structure(),
    *_reductions(),
    *_norms(),
    *_layers(),
    *_attention(),
    *_fused(),
]


def tensors_of(value: Value) -> list[torch.Tensor]:
    """The tensors of a nested value, depth first."""
    if isinstance(value, tuple):
        return [t for v in value for t in tensors_of(v)]
    return [value]


def rebuild(value: Value, tensors: list[torch.Tensor]) -> Value:
    """``value`` with its tensors replaced, in ``tensors_of`` order."""
    found = iter(tensors)

    def swap(v: Value) -> Value:
        return tuple(swap(e) for e in v) if isinstance(v, tuple) else next(found)

    return swap(value)
