"""``modify.convert`` on the ``transformers`` families of :mod:`transformers_families`.

Each family is built from a tiny config with random weights, converted once through
``torch.export`` (``convert(model, (x,), kwargs, output=...)``) and checked against the original
(the reference): only modify classes in the result, outputs equal (atol 1e-5) at the example's
shape and at another batch size and length, every parameter the original's own object, the
original's ``state_dict`` unchanged, parameter gradients equal. The docs' table of what converts
(docs/how-to/convert.md) must list each family's module and ``Function`` counts as found here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import assert_state_equal, state_snapshot
from transformers_families import FAMILIES, SIZES, example

import modify

transformers = pytest.importorskip("transformers")
PAGE = Path(__file__).parents[2] / "docs" / "how-to" / "convert.md"


def table_row(family: str, model: torch.nn.Module, converted: torch.nn.Module) -> str:
    """The docs table's row for a converted family."""
    modules = sum(1 for _ in converted.modules())
    functions = sorted({m.name.rsplit(".", 1)[-1] for m in converted.modules() if isinstance(m, modify.Function)})
    return f"| {family} | `{type(model).__name__}` | converted | {modules} | {', '.join(functions) or '-'} |"


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()


def _grads(model: torch.nn.Module, run, x: torch.Tensor) -> dict[int, torch.Tensor]:
    model.zero_grad()
    _loss(run(x)).backward()
    return {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "make", "kind", "field", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_transformers_family_converts_exactly(family, make, kind, field, kwargs, gen):
    torch.manual_seed(0)
    model = make(transformers).eval()
    (b, n), (b2, n2) = SIZES[kind]
    x = example(kind, b, n, gen)
    before = state_snapshot(model)
    converted = modify.convert(model, (x,), kwargs, output=field)

    assert all(type(m).__module__.startswith("modify.") for m in converted.modules())
    owned = {id(p) for p in model.parameters()}
    assert {id(p) for p in converted.parameters()} <= owned
    assert_state_equal(model, before)
    for inputs in (x, example(kind, b2, n2, gen)):
        with torch.no_grad():
            expected = getattr(model(inputs, **kwargs), field)
            torch.testing.assert_close(converted(inputs), expected, atol=1e-5, rtol=1e-5)
    row = table_row(family, model, converted)
    assert row in PAGE.read_text(), f"docs/how-to/convert.md lacks (run benchmarks/convert_table.py):\n{row}"
    grads = _grads(model, lambda t: getattr(model(t, **kwargs), field), x)
    got = _grads(model, converted, x)
    assert got.keys() == grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(got[key], grad, atol=1e-5, rtol=1e-4)


def test_the_docs_table_lists_every_family_of_the_test_table():
    rows = re.findall(r"^\| ([^|]+) \| `[^`|]+` \| (?:converted|refused)", PAGE.read_text(), flags=re.M)
    assert [r.strip() for r in rows] == [f[0] for f in FAMILIES]
