"""The two combinators, ``Sequential`` and ``Parallel``, and the sugar built from them.

Every network in modify is a tree whose inner nodes are these two classes (or subclasses that
only rename them, like ``Residual`` and ``LoRA``) and whose leaves hold the parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import final

from torch import nn

from ._core.arguments import check_child_name, typechecked
from ._core.checks import checks_enabled, expect_tuple, is_dynamo_compiling
from ._core.errors import annotate
from ._core.hooks import unhooked, unobserved, unwatched
from ._core.inference import combine_parallel, combine_sequence, traits_of
from ._core.module import Leaf, ModifyModule
from ._core.straight_line import LineWriter, straight_line, structure_changed
from .flat_program import FLAT, build_flat, current_flat, run_flat
from ._core.wrapped import wrap
from ._core.sibling import sibling
from .primitives.arithmetic import Add
from .primitives.fusion import run_fused, write_fused
from .primitives.structure import Copy, Identity


class Combinator(ModifyModule):
    """Base of :class:`Sequential` and :class:`Parallel`: an ordered set of named children.

    Children are given positionally (named ``"0"``, ``"1"``, ...) or by keyword (named, order
    kept), not both, as ``torch.nn.Sequential`` takes them (there, by an ``OrderedDict``). Plain
    ``torch.nn`` modules are wrapped as opaque leaves. Children are reached by position, name or
    slice (``m[0]``, ``m["attn"]``, ``m[:-1]``), counted with ``len`` and iterated in order.

    Args:
        *modules: children named ``"0"``, ``"1"``, ... in order.
        **named: children by name, in the order given (instead of ``*modules``).

    Shape:
        ``forward`` is the subclass's: one value -> one value (see :class:`ModifyModule`).

    ``forward`` of :class:`Sequential` and :class:`Parallel` is final: a subclass (``Residual``,
    ``LoRA``, a model) names a structure, it does not change what the structure computes, so
    rewriters may rebuild it as any other combinator.

    Raises:
        TypeError: a child that is not a ``torch.nn.Module``; both positional and named children;
            a subclass of ``Sequential``/``Parallel`` that defines ``forward`` (at class creation).

    Example:
        >>> import torch, modify
        >>> m = modify.Sequential(proj=modify.Linear(4, 4), act=torch.nn.ReLU())
        >>> isinstance(m, modify.Combinator), len(m), list(dict(m.named_children()))
        (True, 2, ['proj', 'act'])
        >>> m["proj"] is m[0], type(m[:1]).__name__
        (True, 'Sequential')
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__ and any(getattr(b.__dict__.get("forward"), "__final__", False) for b in cls.__mro__[1:]):
            raise TypeError(
                f"{cls.__name__} must not define forward: the forward of Sequential/Parallel is final "
                "(a subclass names a structure; compose modules to compute something else)"
            )

    def __init__(self, /, *modules: nn.Module, **named: nn.Module):
        super().__init__()
        if modules and named:
            raise TypeError(f"{type(self).__name__} takes children positionally or by name, not both")
        items = named.items() if named else ((str(i), m) for i, m in enumerate(modules))
        for name, module in items:
            check_child_name(self, name)
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{type(self).__name__} child '{name}' must be a torch.nn.Module, got {type(module).__name__}"
                )
            self.add_module(name, wrap(module))
        self._children_set()

    def __setattr__(self, name: str, value: object) -> None:
        child = isinstance(value, nn.Module) or name in self.__dict__.get("_modules", ())
        if child:
            structure_changed(self)
        super().__setattr__(name, value)
        if child and FLAT in self.__dict__:
            self._children_set()

    def __delattr__(self, name: str) -> None:
        child = name in self._modules
        if child:
            structure_changed(self)
        super().__delattr__(name)
        if child and FLAT in self.__dict__:
            self._children_set()

    def add_module(self, name: str, module: nn.Module | None) -> None:
        """``torch.nn.Module.add_module``; a function written through this combinator is dropped."""
        structure_changed(self)
        super().add_module(name, module)
        if FLAT in self.__dict__:
            self._children_set()

    def _children_set(self) -> None:
        """Build this combinator's flat program (:mod:`modify.flat_program`) for its children now."""
        kind = getattr(self, "flat_kind", None)
        if kind is not None:
            build_flat(self, kind, _direct)

    def __getstate__(self) -> dict:
        # The program is built again on loading: a pickled version number means nothing elsewhere.
        state = dict(self.__dict__)
        state.pop(FLAT, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._children_set()

    def _written_line(self):
        """This combinator's straight-line function where nothing observes module calls, else ``None``."""
        return straight_line(self) if unwatched() else None

    def rebuilt(self, children: dict[str, nn.Module]) -> Combinator:
        """A new combinator of the same class and settings with ``children`` in place of its own.

        The result shares this combinator's own parameters and buffers (if a subclass has any)
        and every child object given; ``self`` is left unchanged. Rewriters use this to rebuild
        only the combinators on the way to a change.

        Args:
            children: ``{name: module}`` with exactly this combinator's child names, in order;
                plain ``torch.nn`` modules are wrapped as opaque leaves.

        Returns:
            The new combinator (same class, attributes shared; hooks not copied).

        Raises:
            ValueError: if the names of ``children`` differ from this combinator's.

        Example:
            >>> import modify
            >>> block = modify.Residual(modify.Linear(4, 4))
            >>> new = block.rebuilt({"0": block[0], "1": block[1], "2": modify.Add()})
            >>> type(new).__name__, new[0] is block[0], new[2] is block[2]
            ('Residual', True, False)
        """
        if list(children) != list(self._modules):
            raise ValueError(
                f"{type(self).__name__}.rebuilt expects children {list(self._modules)}, got {list(children)}"
            )
        return sibling(self, children={name: wrap(m) for name, m in children.items()})

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())

    def __getitem__(self, key: int | str | slice) -> nn.Module:
        """The child at position ``key`` (negative counts from the end) or named ``key``.

        A slice gives a new plain ``Sequential``/``Parallel`` of those children (shared, names
        kept), as ``torch.nn.Sequential`` does: ``model[:-1]`` drops the last child.
        """
        if isinstance(key, str):
            return self._modules[key]
        if isinstance(key, slice):
            plain = Sequential if isinstance(self, Sequential) else Parallel
            return plain(**dict(list(self._modules.items())[key]))
        if not isinstance(key, int) or isinstance(key, bool):
            raise TypeError(f"{type(self).__name__} indices are int, str or slice, got {type(key).__name__}")
        children = list(self._modules.values())
        if not -len(children) <= key < len(children):
            raise IndexError(f"{type(self).__name__} has {len(children)} children, no index {key}")
        return children[key]


# The modules a combinator may run by their forward where nothing observes the call: modify's own
# leaves and combinators (whose hooks the registry sees), not a wrapped torch.nn module (its class
# may define its own __call__) nor a plain child.
_DIRECT = (Leaf, Combinator)


def _direct(module: nn.Module) -> bool:
    return isinstance(module, _DIRECT)


def _compiled_program(combinator: Combinator) -> tuple[bool, tuple | None]:
    """Under dynamo: whether nothing watches module calls, and then the combinator's current flat
    program (:mod:`modify.flat_program`), which dynamo guards by its leaves alone; ``None`` where a
    hook may watch (each hooked child is called) or the program is stale: the children's loop runs.
    A function, not a method (no guards on the classes), returning before the loop (no frame kept
    on the stack per level of a deep tree while dynamo inlines it)."""
    every = unwatched()
    return every, current_flat(combinator) if every else None


class Sequential(Combinator):
    """Compose modules: ``x -> m_n(...m_2(m_1(x)))``, as ``torch.nn.Sequential``.

    Children's ``state_dict`` keys are ``"<name>.<key>"`` as in ``torch.nn.Sequential``. An error
    raised by a child names its dotted path (see :class:`ModifyError`).

    Args:
        *modules: children named ``"0"``, ``"1"``, ... in order.
        **named: children by name, in the order given (instead of ``*modules``).

    Shape:
        Whatever flows: the input of the first child to the output of the last, e.g.
        ``(B, T, C_in) -> (B, T, C_out)`` for an MLP. An empty ``Sequential`` is the identity.

    Raises:
        TypeError: a child that is not a ``torch.nn.Module``; both positional and named children.
        Exception: errors from children propagate with the child's dotted path in their message
            (a ``ModifyError``) or in a note (any other exception).

    Example:
        >>> import torch, modify
        >>> mlp = modify.Sequential(modify.Linear(4, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> mlp(torch.randn(3, 4)).shape
        torch.Size([3, 2])
        >>> list(dict(mlp.named_parameters()))
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """

    flat_kind = "seq"

    @final
    def forward(self, x):
        modules = self._modules
        if is_dynamo_compiling():
            every, flat = _compiled_program(self)
            if flat is not None:
                return run_flat(flat, x)
            for module in modules.values():
                x = module.forward(x) if every and isinstance(module, _DIRECT) else module(x)
            return x
        # Where nothing can observe the calls (no hooks, no tracing: see modify._core.hooks), the
        # whole subtree runs as one straight-line function of its leaves (modify._core.straight_line),
        # from the second call on. Otherwise each unhooked child still runs by its forward (torch's
        # own fast path, without its frames), and a pair with a call-time fusion rule in one call.
        line = self._written_line()
        if line is not None:
            return line(x)
        quiet = unobserved()
        if quiet and len(modules) == 2:
            y = run_fused(self._modules, x)
            if y is not None:
                return y
        for name, module in modules.items():
            try:
                x = module.forward(x) if quiet and isinstance(module, _DIRECT) and unhooked(module) else module(x)
            except Exception as error:
                annotate(error, name, module)
                raise
        return x

    def write_line(self, writer: LineWriter, value: str, path: tuple[str, ...]) -> str:
        """The straight-line form of :meth:`forward` (see :mod:`modify._core.straight_line`)."""
        if len(self._modules) == 2:
            fused = write_fused(writer, self._modules, value, path)
            if fused is not None:
                return fused
        for name, module in self._modules.items():
            value = writer.write(module, value, (*path, name))
        return value

    def _infer_traits(self) -> frozenset[type]:
        own = next(self.parameters(recurse=False), None) is not None
        return combine_sequence([traits_of(m) for m in self._modules.values()], own)


class Parallel(Combinator):
    """Apply modules side by side: ``(x_1, ..., x_n) -> (m_1(x_1), ..., m_n(x_n))``.

    As Trax's ``Parallel`` combinator: branch ``i`` sees only element ``i`` of the input tuple.
    With :class:`~modify.Copy` in front it fans one value out (:class:`Fork`).

    Args:
        *modules: branches named ``"0"``, ``"1"``, ... in order.
        **named: branches by name, in the order given (instead of ``*modules``).

    Shape:
        Input: a tuple of exactly ``len(modules)`` values. Output: a tuple of as many values,
        e.g. ``((B, T, C), (B, T, C)) -> ((B, T, D_1), (B, T, D_2))`` for two projections.

    Raises:
        TypeError: a branch that is not a ``torch.nn.Module``; both positional and named branches.
        ModifyTypeError: (a ``TypeError``) if the input is not a tuple.
        ModifyValueError: (a ``ValueError``) if its length differs from the number of branches,
            e.g. ``Parallel at 'blocks.0.attn' got a tuple of 2 values for 3 branches``.
        Exception: errors from branches propagate with the branch's dotted path, as in
            :class:`Sequential`.

    Example:
        >>> import torch, modify
        >>> both = modify.Parallel(modify.Scale(2.0), modify.Exp())
        >>> a, b = both((torch.ones(2), torch.zeros(2)))
        >>> a.tolist(), b.tolist()
        ([2.0, 2.0], [1.0, 1.0])
    """

    flat_kind = "par"

    @final
    def forward(self, x):
        modules = self._modules
        if is_dynamo_compiling():
            every, flat = _compiled_program(self)
            if flat is not None:
                return run_flat(flat, x)
            return tuple(
                m.forward(v) if every and isinstance(m, _DIRECT) else m(v) for m, v in zip(modules.values(), x)
            )
        if (not isinstance(x, tuple) or len(x) != len(modules)) and checks_enabled():
            self._check(x)
        # As in Sequential.forward; an unhooked branch that passes its value through (Identity,
        # carrying a padded batch's mask past a block) is not called at all.
        line = self._written_line()
        if line is not None:
            return line(x)
        quiet = unobserved()
        out = []
        for (name, module), value in zip(modules.items(), x, strict=True):
            if quiet and isinstance(module, _DIRECT) and unhooked(module):
                if module.passes_through:
                    out.append(value)
                    continue
                call = module.forward
            else:
                call = module
            try:
                out.append(call(value))
            except Exception as error:
                annotate(error, name, module)
                raise
        return tuple(out)

    def write_line(self, writer: LineWriter, value: str, path: tuple[str, ...]) -> str:
        """The straight-line form of :meth:`forward`: the input unpacked, each branch on its element.

        The input's check is written for a nested ``Parallel``; the top one checks in ``forward``.
        """
        count = len(self._modules)
        if path:
            writer.line(f"if ({value}.__class__ is not tuple or len({value}) != {count}) and checks_enabled():")
            with writer.indented():
                writer.call(f"{writer.name(self)}._check({value})", path, self, keep=False)
        parts = [writer.variable() for _ in range(count)]
        writer.line(f"{', '.join(parts)}, = {value}")
        outs = [writer.write(module, part, (*path, name)) for (name, module), part in zip(self._modules.items(), parts)]
        out = writer.variable()
        writer.line(f"{out} = ({', '.join(outs)},)")
        return out

    def _check(self, x: object) -> None:
        expect_tuple(self, x, len(self._modules), ("branch", "branches"))

    def _infer_traits(self) -> frozenset[type]:
        own = next(self.parameters(recurse=False), None) is not None
        return combine_parallel([traits_of(m) for m in self._modules.values()], own)


class Residual(Sequential):
    """A residual connection ``x -> x + block(x)``.

    Exactly ``Sequential(Copy(2), Parallel(Identity(), block), Add())``: the block sits at path
    ``"1.1"``. He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        block: any module whose output has the shape of its input.

    Shape:
        ``(*) -> (*)``, e.g. a transformer sub-block ``(B, T, C) -> (B, T, C)``.

    Raises:
        TypeError: ``block`` is not a ``torch.nn.Module``.
        ModifyValueError: at run time, from the ``Add`` at path ``"2"``, a ``block`` whose output
            shape differs from its input's.

    Example:
        >>> import torch, modify
        >>> r = modify.Residual(modify.Scale(3.0))
        >>> r(torch.ones(2)).tolist(), r.block.c
        ([4.0, 4.0], 3.0)
    """

    @typechecked
    def __init__(self, block: nn.Module):
        super().__init__(Copy(2), Parallel(Identity(), block), Add())

    @property
    def block(self) -> nn.Module:
        """The wrapped block (path ``"1.1"``), as penzai's ``Residual.delta``."""
        return self[1][1]


class Fork(Sequential):
    """Feed one value to several modules: ``x -> (m_1(x), ..., m_n(x))``.

    Exactly ``Sequential(Copy(len(modules)), Parallel(*modules))``, as Trax's ``Branch``
    combinator: the branches sit at paths ``"1.0"``, ``"1.1"``, ... or, given by name
    (``Fork(q=..., k=..., v=...)``), at ``"1.q"``, ``"1.k"``, ... and are reached by name:
    ``fork["q"]`` (any name other than the ``Sequential``'s own ``"0"`` and ``"1"``).

    Args:
        *modules: the branches (at least one), named ``"0"``, ``"1"``, ...
        **named: the branches by name, in the order given (instead of ``*modules``).

    Shape:
        Input: one value. Output: a tuple of ``len(modules)`` values, e.g. q/k/v projections
        ``(B, T, C) -> ((B, T, C), (B, T, C), (B, T, C))``.

    Raises:
        TypeError: a branch that is not a ``torch.nn.Module``; both positional and named branches.
        ValueError: if no module is given.

    Example:
        >>> import torch, modify
        >>> q, k = modify.Fork(modify.Scale(1.0), modify.Scale(2.0))(torch.ones(1))
        >>> k.tolist()
        [2.0]
        >>> qk = modify.Fork(q=modify.Linear(4, 2), k=modify.Linear(4, 2))
        >>> qk["k"] is qk.branches[1], list(dict(qk.named_parameters()))[:2]
        (True, ['1.q.weight', '1.q.bias'])
    """

    @typechecked
    def __init__(self, *modules: nn.Module, **named: nn.Module):
        if not modules and not named:
            raise ValueError("Fork needs at least one module")
        if modules and named:
            raise TypeError("Fork takes branches positionally or by name, not both")
        super().__init__(Copy(len(modules) or len(named)), Parallel(*modules, **named))

    @property
    def branches(self) -> nn.Module:
        """The ``Parallel`` of the branches (path ``"1"``)."""
        return self[1]

    def __getitem__(self, key: int | str | slice) -> nn.Module:
        if isinstance(key, str) and key not in self._modules:
            return self.branches[key]
        return super().__getitem__(key)
