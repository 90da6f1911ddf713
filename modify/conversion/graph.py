"""A dataflow graph of leaves as a tree of ``Sequential``/``Parallel``.

The graph is a list of *units* in execution order; each unit is a module that takes some earlier
values (one value, or a tuple of them) and makes one new value. :func:`build` turns it into one
module from the region's inputs to its output, trying the readable shapes first:

1. **Cuts.** Where exactly one value is alive between two units, the graph is cut; the pieces
   run one after the other (``Sequential``), so a chain of layers is a plain ``Sequential``.
2. **Fans.** A piece with one input whose last unit takes ``k`` values, each computed from the
   input by its own units, is ``Sequential(Fork(branch_1, ..., branch_k), last)``; with ``k = 2``,
   a branch that is the input itself and an ``Add`` it is ``Residual(branch)``. When the input is a
   tuple of ``k`` values (a ``Split`` of known count) and branch ``i`` starts by picking element
   ``i``, the branches run on it directly: ``Sequential(Parallel(branch_1, ..., branch_k), last)``.
3. **Environments.** Any other piece carries its live values as a tuple, the *environment*: each
   unit becomes a step ``Fork(Index(i), ..., Sequential(<gather its inputs>, unit))`` that keeps
   the values still needed and appends the new one (``Index`` picks, ``Copy`` duplicates).

Children are named after the units (the original attribute names); composite steps are named
``fork``, ``residual`` or ``step`` (with ``_1``, ``_2``, ... when a name repeats), and a unit that
first gathers its inputs is ``<unit>_step = Sequential(inputs=..., <unit>=...)``, so a glob on the
unit's name finds the unit itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..combinators import Fork, Parallel, Residual, Sequential
from ..primitives.structure import Copy, Identity, Index


@dataclass(eq=False)
class Unit:
    """One module of the graph: ``output = module(inputs)`` (one value, or a tuple of several)."""

    name: str
    module: nn.Module
    inputs: list[object]
    output: object
    is_add: bool = False


def build(units: list[Unit], inputs: list[object], output: object) -> nn.Module:
    """The module from ``inputs`` (one value, or a tuple in this order) to ``output``."""
    if not units:
        return gather(inputs, [output])
    steps: dict[str, nn.Module] = {}
    env = list(inputs)
    for piece in _pieces(units, inputs, output):
        last = piece[-1].output
        module, name = _piece(piece, env, last)
        if name in ("fork", "step"):  # a plain Sequential of steps: its steps join this one
            for child_name, child in module.named_children():
                _add(steps, child_name, child)
        else:
            _add(steps, name, module)
        env = [last]
    if len(steps) == 1:
        return next(iter(steps.values()))
    return Sequential(**steps)


def _pieces(units: list[Unit], inputs: list[object], output: object) -> list[list[Unit]]:
    """``units`` cut wherever the only live value is the one just made."""
    needed_after: list[set[object]] = []
    needed = {output}
    for unit in reversed(units):
        needed_after.append(set(needed))
        needed |= set(unit.inputs)
    needed_after.reverse()
    pieces, current, made = [], [], set(inputs)
    for unit, needed in zip(units, needed_after):
        current.append(unit)
        made.add(unit.output)
        if made & needed == {unit.output}:
            pieces.append(current)
            current = []
    if current:
        pieces.append(current)
    return pieces


def _piece(piece: list[Unit], env: list[object], output: object) -> tuple[nn.Module, str]:
    if len(piece) == 1 and piece[0].inputs == env:
        return piece[0].module, piece[0].name
    if len(env) == 1:
        fan = _fan(piece, env[0])
        if fan is not None:
            return fan
    return _environment(piece, env, output), "step"


def _fan(piece: list[Unit], source: object) -> tuple[nn.Module, str] | None:
    last = piece[-1]
    if len(set(last.inputs)) != len(last.inputs):
        return None
    producers = {u.output: u for u in piece[:-1]}
    owner: dict[Unit, object] = {}
    for value in last.inputs:
        for unit in _ancestors(value, producers):
            if owner.setdefault(unit, value) is not value:
                return None
    if len(owner) != len(piece) - 1:
        return None
    spread = _spread(piece, source, owner)
    if spread is not None:
        return spread
    branches = {}
    for value in last.inputs:
        members = [u for u in piece[:-1] if owner.get(u) is value]
        branches[value] = (members, Identity() if value is source else build(members, [source], value))
    if last.is_add and len(last.inputs) == 2:
        identities = [v for v in last.inputs if v is source]
        if len(identities) == 1:
            members, block = branches[next(v for v in last.inputs if v is not source)]
            return Residual(_named(members, block)), "residual"
    named: dict[str, nn.Module] = {}
    for i, value in enumerate(last.inputs):
        members, module = branches[value]
        _add(named, members[0].name if len(members) == 1 else str(i), module)
    steps: dict[str, nn.Module] = {}
    _add(steps, "fork", named_fork(named))
    _add(steps, last.name, last.module)
    return Sequential(**steps), "fork"


def _spread(piece: list[Unit], source: object, owner: dict[Unit, object]) -> tuple[nn.Module, str] | None:
    """``Sequential(Parallel(branch_0, ..., branch_{n-1}), last)`` when ``source`` is a tuple of
    ``n`` values and branch ``i`` starts by picking element ``i`` (q, k, v after a split)."""
    last = piece[-1]
    length = getattr(source, "meta", {}).get("modify_tuple_length")
    if length != len(last.inputs):
        return None
    named: dict[str, nn.Module] = {}
    for i, value in enumerate(last.inputs):
        members = [u for u in piece[:-1] if owner.get(u) is value]
        pick = members[0] if members else None
        if pick is None or not isinstance(pick.module, Index) or pick.module.index != i or pick.inputs != [source]:
            return None
        rest = members[1:]
        if any(source in u.inputs for u in rest):
            return None
        _add(named, rest[0].name if len(rest) == 1 else str(i), build(rest, [pick.output], value))
    steps: dict[str, nn.Module] = {}
    _add(steps, "spread", Parallel(**named))
    _add(steps, last.name, last.module)
    return Sequential(**steps), "fork"


def _ancestors(value: object, producers: dict[object, Unit]) -> list[Unit]:
    found, stack = [], [value]
    while stack:
        unit = producers.get(stack.pop())
        if unit is not None and unit not in found:
            found.append(unit)
            stack.extend(unit.inputs)
    return found


def _named(members: list[Unit], module: nn.Module) -> nn.Module:
    """A single unit's module inside ``Sequential(name=module)``, so its name shows in paths."""
    return Sequential(**{members[0].name: module}) if len(members) == 1 else module


def named_fork(named: dict[str, nn.Module]) -> Fork:
    """``Fork`` over ``named`` branches, the branch names kept (``Fork`` names them ``"0"``, ...)."""
    modules = list(named.values())
    plain = Fork(*modules)
    if list(named) == [str(i) for i in range(len(modules))]:
        return plain
    return plain.rebuilt({"0": plain[0], "1": Parallel(**named)})


def _environment(piece: list[Unit], env: list[object], output: object) -> nn.Module:
    steps: dict[str, nn.Module] = {}
    for i, unit in enumerate(piece):
        later = {v for u in piece[i + 1 :] for v in u.inputs} | {output}
        survivors = [v for v in env if v in later]
        name, compute = unit.name, unit.module
        if unit.inputs != env:  # the unit keeps its own name inside: globs on it find the unit itself
            name, compute = f"{unit.name}_step", Sequential(**{"inputs": gather(env, unit.inputs), unit.name: unit.module})
        if survivors:
            branches = {str(j): gather(env, [v]) for j, v in enumerate(survivors)}
            _add(branches, name, compute)
            _add(steps, "step", named_fork(branches))
        else:
            _add(steps, name, compute)
        env = survivors + [unit.output]
    return Sequential(**steps)


def gather(env: list[object], wanted: list[object]) -> nn.Module:
    """The module taking the environment ``env`` (one value or a tuple) to ``wanted``'s values."""
    if len(env) == 1:
        return Identity() if len(wanted) == 1 else Copy(len(wanted))
    if wanted == env:
        return Identity()
    if len(wanted) == 1:
        return Index(env.index(wanted[0]))
    return Fork(*[Index(env.index(w)) for w in wanted])


def _add(steps: dict[str, nn.Module], name: str, module: nn.Module) -> None:
    key, n = name, 0
    while key in steps:
        n += 1
        key = f"{name}_{n}"
    steps[key] = module
