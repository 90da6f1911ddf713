"""Property: a random small ``torch.nn`` program converts to the same function, or is refused.

Hypothesis draws programs over a list of live values of shape ``(B, 4, 6)``: shared linear
layers, residual sums, ``torch.cat`` of lists (a one-element list too) followed by views,
channel shuffles (``view`` after ``transpose(...).contiguous()``), ``chunk``/``split`` and
reordering, parameter-only values (``gamma.view(...)``), a mask buffer sliced to the input's
length. ``modify.convert`` (with and without an example) must give equal outputs at two batch
sizes, or raise ``TypeError``: never a wrong tree.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modify

OPS = ("linear", "add", "cat_view", "shuffle", "chunk", "split", "gamma", "mask", "relu", "cat_one")


class Program(nn.Module):
    """``steps`` of ``(op, i, j)``: apply ``op`` to live values ``i`` (and ``j``), append the result."""

    def __init__(self, steps: list[tuple[str, int, int]], shared: int):
        super().__init__()
        self.steps = steps
        self.linears = nn.ModuleList(nn.Linear(6, 6) for _ in range(shared))
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.register_buffer("mask", torch.tril(torch.ones(4, 16)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for n, (op, i, j) in enumerate(self.steps):
            a, b = values[i % len(values)], values[j % len(values)]
            values.append(self.step(op, a, b, n))
        return values[-1] + values[len(values) // 2]

    def step(self, op: str, a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
        B, C, L = a.size()
        if op == "linear":
            return self.linears[n % len(self.linears)](a)
        if op == "add":
            return a + b
        if op == "cat_view":
            return torch.cat([a, b], dim=2).view(B, C, 2, L).sum(2)
        if op == "shuffle":
            return torch.transpose(a.view(B, 2, C // 2, L), 1, 2).contiguous().view(B, -1, L)
        if op == "chunk":
            first, second = a.chunk(2, dim=1)
            return torch.cat((second, first), 1)
        if op == "split":
            parts = a.split(3, dim=2)
            return torch.cat([parts[1], parts[0]], dim=2) * b
        if op == "gamma":
            return a * self.gamma.view(1, -1, 1)
        if op == "mask":
            return a.masked_fill(self.mask[:, :L] == 0, 0.0)
        if op == "relu":
            return torch.relu(a) - b
        return torch.cat([a], 1)


programs = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=7)


@settings(deadline=None, max_examples=25)
@given(steps=programs, shared=st.integers(1, 2), with_example=st.booleans())
def test_a_random_program_converts_to_the_same_function_or_raises(steps, shared, with_example):
    torch.manual_seed(0)
    program = Program(steps, shared).eval()
    example = torch.randn(2, 4, 6)
    try:
        converted = modify.convert(program, (example,) if with_example else None)
    except TypeError:
        return
    for batch in (2, 3):
        x = torch.randn(batch, 4, 6)
        with torch.no_grad():
            torch.testing.assert_close(converted(x), program(x), atol=1e-5, rtol=1e-5)
    assert {id(p) for p in converted.parameters()} <= {id(p) for p in program.parameters()}


def test_a_refused_program_names_the_construct():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TypeError, match="control flow"):
        modify.convert(Branchy())


@pytest.mark.parametrize("with_example", [False, True])
def test_a_program_of_every_op_converts(with_example):
    program = Program([(op, n, n + 3) for n, op in enumerate(OPS)], shared=2).eval()
    converted = modify.convert(program, (torch.randn(2, 4, 6),) if with_example else None)
    x = torch.randn(3, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), program(x), atol=1e-5, rtol=1e-5)
