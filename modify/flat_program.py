"""A combinator tree as one flat program of its leaves, for ``torch.compile``.

Under ``torch.compile``, dynamo guards every object its trace reads before it reuses a graph: a
combinator's loop over its children reads the combinator, its ``__dict__``, its ``_modules``
dictionary and each key in order. The tiny GPT's 31 combinators made its compiled forward check
1,404 guard nodes against plain torch's 562 (two to three times the guard-check time, 3 to 4% of
a training step); run by its program, 889 to 892 (``docs/benchmarks.md``, section 1, eighth pass).

So each ``Sequential``/``Parallel`` keeps its subtree in a form dynamo reads cheaply: the tuple of
units it calls in order (leaves, and any module that is not a plain combinator) and a nested
tuple of literals saying how values flow between them (dynamo guards the whole literal by one
equality test). Traced, where nothing watches module calls (:func:`~modify._core.hooks.unwatched`),
the combinator runs the program (:func:`run_flat`) and reads only its units, never the
combinators between them. Trees of one structure have equal programs, so a sibling of the same
structure (a key/value-cache model, a deep copy) reuses the graph compiled for another.

The program is built when the combinator is (from its children's programs, so a tree costs its
size times its depth), when its children change, when a sibling gets its own children
(``ModifyModule._children_set``), and on unpickling (it is not pickled). A change below (a
combinator the program was built through) bumps the version in
:mod:`modify._core.straight_line`, and a program of an older version is not used (the
combinators loop, as they always may, with their larger guard set). The version is one number for
the process, so such a change (which no rewriter makes: they build siblings) sends every tree built
before it back to the loop when compiled. Nodes:

- ``("unit", 1)``: the next unit, run by its ``forward``; ``("call", 1)``: called, ``unit(x)``
  (a module that is not a modify module, whose class may define its own ``__call__``);
- ``("pass", 0)``: a leaf that passes its value through, not called;
- ``("fuse", 2, rule)``: the next two units, a pair whose call-time fusion rule
  (:mod:`modify.primitives.fusion`) fitted when the program was built, in one call (the two
  leaves where the rule declines the input: another dtype);
- ``("seq", n, nodes)``, ``("par", n, nodes)``: a ``Sequential`` or ``Parallel`` of ``n`` units.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._core.straight_line import current_version, own_hook, written_through
from ._core.checks import describe
from ._core.module import Leaf
from .primitives.fusion import CALL_TIME, call_time_rule

#: Where a combinator keeps ``(version, units, node)`` in its ``__dict__``.
FLAT = "_flat_program"
_RULES = tuple(dict.fromkeys(CALL_TIME.values()))
_RUNS = tuple(rule.run for rule in _RULES)


def build_flat(combinator: nn.Module, kind: str, direct: Callable[[nn.Module], bool]) -> None:
    """Store ``combinator``'s program (``kind``: ``"seq"`` or ``"par"``) in its ``__dict__``.

    ``direct(module)``: whether a unit may be run by its ``forward`` (a modify module).
    """
    units: list[nn.Module] = []
    children = list(combinator._modules.values())
    nodes = tuple(_node(child, units, direct) for child in children)
    if kind == "seq" and len(children) == 2 and all(node == ("unit", 1) for node in nodes):
        rule = call_time_rule(*children)
        if rule is not None:
            nodes = (("fuse", 2, _RULES.index(rule)),)
    combinator.__dict__[FLAT] = (current_version(), tuple(units), (kind, len(units), nodes))


def _node(child: nn.Module, units: list[nn.Module], direct: Callable[[nn.Module], bool]) -> tuple:
    """``child``'s node, its units appended to ``units``."""
    if isinstance(child, Leaf) and child.passes_through:
        return ("pass", 0)
    flat = child.__dict__.get(FLAT)
    if flat is not None and own_hook(child, "flat_kind"):
        if flat[0] != current_version():
            build_flat(child, child.flat_kind, direct)
            flat = child.__dict__[FLAT]
        written_through(child)
        units.extend(flat[1])
        return flat[2]
    units.append(child)
    return ("unit", 1) if direct(child) else ("call", 1)


def current_flat(combinator: nn.Module) -> tuple | None:
    """``combinator``'s program if it is of the current version, else ``None``."""
    flat = combinator.__dict__.get(FLAT)
    return flat if flat is not None and flat[0] == current_version() else None


def run_flat(flat: tuple, x: object) -> object:
    """What the combinator computes on ``x``, by its program (traced by dynamo, which unrolls it)."""
    return _run(flat[2], flat[1], 0, x)


def _run(node: tuple, units: tuple, start: int, x: object) -> object:
    kind = node[0]
    if kind == "unit":
        return units[start].forward(x)
    if kind == "call":
        return units[start](x)
    if kind == "pass":
        return x
    if kind == "fuse":
        first, second = units[start], units[start + 1]
        y = _RUNS[node[2]](first, second, x)
        return second.forward(first.forward(x)) if y is None else y
    if kind == "seq":
        for child in node[2]:
            x = _run(child, units, start, x)
            start += child[1]
        return x
    if not isinstance(x, tuple) or len(x) != len(node[2]):
        raise ValueError(f"a compiled Parallel of {len(node[2])} branches got {describe(x)}")
    out = []
    for child, value in zip(node[2], x):
        out.append(_run(child, units, start, value))
        start += child[1]
    return tuple(out)
