"""Queries on the one walk: ``select`` finds ``(path, module)`` pairs, a ``Selection`` rewrites them.

``select`` reads :func:`~modify.rewriting.walk.positions` (``named_modules`` order, the insides of
opaque leaves included); ``Selection.apply``/``insert_*`` and ``rewrite`` build the new model with
:func:`~modify.rewriting.walk.rebuild`, looking only into the subtrees on the way to a selected
module. A selected module inside a leaf, which ``rebuild`` does not open, is refused with a
``ValueError`` unless a selected module enclosing it is replaced as a whole.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .._core.arguments import typechecked
from .._core.identity import once_per_object, unique
from ..combinators import Combinator, Sequential
from .criteria import Criterion, describe, matcher, reference_name
from .foreign import foreign_model_hint
from .walk import positions, rebuild

_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class Selection(list):
    """The ``(path, module)`` pairs of a model that match some criteria, in ``named_modules`` order.

    Returned by :func:`select`; after Penzai's ``penzai.core.selectors.Selection``, for
    ``torch.nn`` trees. A plain ``list`` of pairs that remembers its model. A module placed at
    several paths appears once per matching path. The methods build a **new** model (the model
    itself when nothing matched) and never touch the selected model: unmatched subtrees are
    shared by identity and only the combinators on the way to a change are rebuilt. They use the
    pairs the list holds when called. The constructor checks nothing; the methods raise as each
    documents.

    Args:
        model: the model the selection was made from.
        pairs: the selected ``(path, module)`` pairs, paths as in ``model.named_modules()``.

    Attributes:
        model: the model the selection was made from.

    Example:
        >>> import modify
        >>> lin = modify.Linear(4, 4)
        >>> mlp = modify.Sequential(lin, modify.ReLU(), lin)              # one layer at two paths
        >>> chosen = modify.select(mlp, modify.Linear)
        >>> chosen
        Selection([('0', 'Linear'), ('2', 'Linear')])
        >>> chosen.paths(), chosen.modules() == [lin], len(chosen.parameters())
        (['0', '2'], True, 2)
    """

    def __init__(self, model: nn.Module, pairs: list[tuple[str, nn.Module]]):
        super().__init__(pairs)
        self.model = model
        self._leaves: dict[str, str] | None = None  # path -> enclosing leaf, filled by select

    def __repr__(self) -> str:
        return f"Selection({[(path, type(module).__name__) for path, module in self]!r})"

    def paths(self) -> list[str]:
        """The selected dotted paths (``""`` is the root), one per pair, in order.

        Returns:
            A list of str.
        """
        return [path for path, _ in self]

    def modules(self) -> list[nn.Module]:
        """The selected modules, once each (a module at several paths is listed once).

        Returns:
            A list of the model's own module objects, in order of first appearance.
        """
        return unique(module for _, module in self)

    def parameters(self) -> list[nn.Parameter]:
        """The parameters of the selected modules, each parameter object once, in model order.

        Returns:
            A list of ``nn.Parameter`` (the model's own, not copies), e.g. for an optimizer.
        """
        return unique(parameter for module in self.modules() for parameter in module.parameters())

    @typechecked
    def apply(self, fn: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Replace every selected module by ``fn(module)``; outermost first.

        A replaced subtree is not descended: ``fn`` is not called for selected modules inside it.
        ``fn`` is called once per distinct module; its result goes to every selected path of that
        module. Plain ``torch.nn`` results are wrapped as opaque leaves when placed in a combinator.
        Modules of the result that were not in the model take the training mode of the module
        they replace, and the result its ``reference_name`` (the walk's rule, see
        :func:`~modify.rewriting.walk.rebuild`).

        Args:
            fn: ``module -> module``.

        Returns:
            The new model; ``fn(model)`` itself if the root (path ``""``) is selected.

        Raises:
            TypeError: ``fn`` returned something that is not a ``torch.nn.Module``.
            ValueError: a selected module lies inside a leaf (an opaque ``torch.nn`` module),
                where no rewrite can reach without changing that module in place.

        Example:
            >>> import torch, modify
            >>> mlp = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
            >>> new = modify.select(mlp, modify.ReLU).apply(lambda m: modify.GELU())
            >>> type(new[1]).__name__, new[0] is mlp[0], type(mlp[1]).__name__
            ('GELU', True, 'ReLU')
        """
        selected, replace = dict(self), once_per_object(lambda module, path: _checked_module(fn(module), path, "fn"))
        self._refuse_inside_leaves(replaced=True)
        on_the_way = _on_the_way(selected)

        def pre(path: str, module: nn.Module) -> nn.Module | None:
            if selected.get(path) is not module:
                return None if path in on_the_way else module  # nothing selected below: kept whole
            return replace(module, path)

        return rebuild(self.model, pre)

    @typechecked
    def insert_before(self, make: nn.Module | Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Put a module in front of every selected one: ``m`` becomes ``Sequential(make(m), m)``.

        Selected modules inside a selected one get their insertion too (the selected module is
        kept, so its inside is walked). The selected module moves to path ``<path>.1``.

        Args:
            make: ``module -> module``, called once per distinct selected module; or a module,
                inserted as that same object at every selected path (shared: pass a callable for
                one fresh module per position).

        Returns:
            The new model.

        Raises:
            TypeError: ``make`` returned something that is not a ``torch.nn.Module``.
            ValueError: a selected module lies inside a leaf (see :meth:`apply`).

        Example:
            >>> import torch, modify
            >>> mlp = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
            >>> new = modify.select(mlp, modify.ReLU).insert_before(modify.Scale(2.0))
            >>> type(new[1]).__name__, type(new[1][0]).__name__, new[1][1] is mlp[1]
            ('Sequential', 'Scale', True)
        """
        return self._insert(make, before=True)

    @typechecked
    def insert_after(self, make: nn.Module | Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Put a module after every selected one: ``m`` becomes ``Sequential(m, make(m))``.

        As :meth:`insert_before` (same ``make``, return value and errors), on the other side;
        the selected module moves to path ``<path>.0``.

        Example:
            >>> import torch, modify
            >>> mlp = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
            >>> new = modify.select(mlp, modify.Linear).insert_after(lambda m: modify.Scale(0.5))
            >>> list(dict(new.named_parameters()))
            ['0.0.weight', '0.0.bias']
        """
        return self._insert(make, before=False)

    def _insert(self, make: nn.Module | Callable[[nn.Module], nn.Module], before: bool) -> nn.Module:
        selected = dict(self)
        made = once_per_object(
            lambda original, path: _checked_module(make if isinstance(make, nn.Module) else make(original), path, "make")
        )
        self._refuse_inside_leaves(replaced=False)
        on_the_way = _on_the_way(selected)

        def pre(path: str, module: nn.Module) -> nn.Module | None:
            return None if path in on_the_way or path in selected else module

        def post(path: str, original: nn.Module, new: nn.Module) -> nn.Module:
            if selected.get(path) is not original:
                return new
            extra = made(original, path)
            return Sequential(extra, new) if before else Sequential(new, extra)

        return rebuild(self.model, pre, post)

    def _refuse_inside_leaves(self, replaced: bool) -> None:
        """Raise if a selected module lies inside a leaf, which :func:`rebuild` does not open.

        With ``replaced`` (``apply``), a selected module enclosing it is replaced as a whole (the
        outermost selected one is reached first), so its inside does not matter.
        """
        leaves = self._leaves if self._leaves is not None else {p: leaf for p, _, leaf in positions(self.model) if leaf is not None}
        selected = set(self.paths())
        for path in selected & leaves.keys():
            if replaced and any(ancestor in selected for ancestor in _ancestors(path)):
                continue
            leaf = leaves[path]
            _refuse([p for p in selected if not leaf or p.startswith(f"{leaf}.")], leaf, self.model.get_submodule(leaf))


def _on_the_way(selected: dict[str, nn.Module]) -> set[str]:
    """The paths strictly above a selected one: the only places a rewrite must look into."""
    return {ancestor for path in selected if path for ancestor in _ancestors(path)}


def _ancestors(path: str) -> list[str]:
    """The proper ancestors of a non-root path, the root ``""`` first."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]


def _checked_module(value: object, path: str, what: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{what} returned {type(value).__name__} for the module at '{path}', not a torch.nn.Module")
    return value


@typechecked
def select(model: nn.Module, *where: Criterion) -> Selection:
    """Find the modules of ``model`` that match every criterion in ``where``.

    After Penzai's ``pz.select(...).at_instances_of(...)``, for ``torch.nn`` trees, with
    ``fnmatch`` globs over ``named_modules`` paths.

    Args:
        model: any ``torch.nn.Module``; left unchanged.
        *where: criteria, all of which must hold (none: every module matches):

            - a module class (``modify.Linear``, ``torch.nn.LayerNorm``): ``isinstance``;
            - a trait (``modify.traits.Elementwise``): in ``modify.traits_of(module)``;
            - a glob over the dotted path with ``fnmatch`` semantics, where ``*`` also spans
              dots (``"blocks.*.attn.*"``); the root's path is ``""``. It also matches a
              module's ``reference_name`` (transformers' ``transformer.h.0.attn.c_attn`` for
              the ``c_attn`` of ``modify.models.GPT``; a converted model's original path), so
              the names in a PEFT ``adapter_config.json`` select the same layers. Inside a
              selected module that took a layer's name (its LoRA block), the layer is matched by
              path only, so a name selects the outermost module carrying it that matches;
            - a predicate ``(path, module) -> bool``, e.g. :func:`modify.any_of` (the union of
              criteria).

            ``modify.Linear`` (the layer class) and ``modify.traits.Linear`` (the trait of every
            affine module, combinators included) are different criteria.

    Returns:
        A :class:`Selection`: the matching ``(path, module)`` pairs in
        ``model.named_modules(remove_duplicate=False)`` order (a shared module once per path).

    Raises:
        TypeError: a criterion of another kind, or a predicate returning a non-``bool``.

    Example:
        >>> import modify
        >>> net = modify.Sequential(
        ...     block=modify.Residual(modify.Sequential(modify.Linear(4, 4), modify.GELU())),
        ...     head=modify.Linear(4, 2))
        >>> modify.select(net, modify.Linear).paths()
        ['block.1.1.0', 'head']
        >>> modify.select(net, modify.Linear, "block.*").paths()
        ['block.1.1.0']
        >>> modify.select(net, modify.traits.Elementwise).paths()
        ['block.1.0', 'block.1.1.1', 'block.2']
    """
    shadowed: set[str] = set()  # paths whose reference name an enclosing selected module carries
    match, pairs, leaves, names = matcher(where, shadowed), [], {}, {}
    for path, module, leaf in positions(model):
        name = reference_name(module)
        if name is not None and path and any(names.get(a) == name for a in _ancestors(path)):
            shadowed.add(path)
        if match(path, module):
            names[path] = name
            pairs.append((path, module))
            if leaf is not None:
                leaves[path] = leaf
    selection = Selection(model, pairs)
    selection._leaves = leaves
    return selection


@typechecked
def rewrite(model: nn.Module, fn: Callable[[nn.Module], nn.Module], *where: Criterion) -> nn.Module:
    """A new model where every module matching ``where`` is replaced by ``fn(module)``.

    Exactly ``select(model, *where).apply(fn)`` (Penzai's ``select(...).apply(fn)``, for
    ``torch.nn`` trees): outermost matches first, a replaced subtree is not descended, unmatched
    subtrees are shared by identity, and only the combinators on the way to a change are
    rebuilt. ``model``, its ``state_dict``, outputs and parameters are unchanged.

    Args:
        model: the model to rewrite.
        fn: ``module -> module``, called once per distinct matched module.
        *where: criteria as in :func:`select`.

    Returns:
        The new model (``model`` itself when nothing matches).

    Raises:
        TypeError: ``model`` not a module, a bad criterion, a predicate returning a non-``bool``,
            or ``fn`` returning a non-module.
        ValueError: a match inside an opaque leaf (see :meth:`Selection.apply`).

    Example:
        >>> import torch, modify
        >>> mlp = modify.Sequential(modify.Linear(4, 4), modify.ReLU(), modify.Linear(4, 2))
        >>> silu = modify.rewrite(mlp, lambda m: modify.SiLU(), modify.ReLU)
        >>> silu[0] is mlp[0], type(silu[1]).__name__, type(mlp[1]).__name__
        (True, 'SiLU', 'ReLU')
    """
    return select(model, *where).apply(fn)


def _refuse(inside: list[str], path: str, leaf: nn.Module) -> None:
    """The one "cannot rewrite inside a leaf" error, with the way out for a plain ``torch.nn`` container."""
    where, first = path or "<root>", sorted(inside)[0]
    if isinstance(leaf, _PLAIN_CONTAINERS) and not isinstance(leaf, Combinator):
        advice = (f"it is a plain torch.nn {type(leaf).__name__} container: rebuild it with "
                  "modify.Sequential(*container) (its layers are kept, as opaque leaves), or convert the model "
                  "with modify.convert(model)")
    else:
        advice = foreign_model_hint(leaf) or "select the leaf itself or build that part from modify modules"
    raise ValueError(
        f"cannot rewrite {sorted(inside)[:3]}: '{first}' lies inside the leaf {type(leaf).__name__} at '{where}', "
        f"which rewrites do not open (only modify's Sequential/Parallel are walked); {advice}"
    )


def matching(model: nn.Module, where: tuple, owner: str, unsaid: tuple = ()) -> Selection:
    """``select(model, *where, *unsaid)``, refusing an empty selection: the one "matches nothing" error of rewriters.

    ``unsaid`` holds the rewriter's own criteria (``lora`` skips adapter layers), left out of the message.

    Raises:
        ValueError: nothing matched, naming ``owner`` and ``where``; for several criteria, that a
            tuple means *all of* them and :func:`~modify.any_of` is the union; for a plain
            ``torch.nn`` container, how to make it walkable.
    """
    selection = select(model, *where, *unsaid)
    if selection:
        return selection
    shown = ", ".join(describe(c) for c in where)
    hint = ""
    if len(where) > 1:
        hint = (f"; a tuple `where` means all of its criteria at once: for any of them, "
                f"use where=modify.any_of({shown})")
    if isinstance(model, _PLAIN_CONTAINERS) and not isinstance(model, Combinator):
        hint += (f"; the model is a plain torch.nn {type(model).__name__} container, which modify's rewriters do "
                 "not open: use modify.Sequential(*model) or modify.convert(model)")
    raise ValueError(f"{owner}: `where` ({shown}) matches no layer of the {type(model).__name__}{hint}")


@typechecked
def parameters(model: nn.Module, *where: Criterion) -> list[nn.Parameter]:
    """The parameters of the modules matching ``where``, each parameter once, for an optimizer.

    As ``list(model.parameters())`` restricted to the selected modules: exactly
    ``select(model, *where).parameters()``.

    Args:
        model: any module.
        *where: criteria as in :func:`select` (none: all of ``model``'s parameters).

    Returns:
        A list of ``nn.Parameter`` objects (the model's own, not copies), in model order.

    Raises:
        TypeError: ``model`` not a module, a bad criterion, or a predicate returning a
            non-``bool``.

    Example:
        >>> import torch, modify
        >>> mlp = modify.Sequential(modify.Linear(4, 4), modify.ReLU(), modify.Linear(4, 2))
        >>> [tuple(p.shape) for p in modify.parameters(mlp, "2")]
        [(2, 4), (2,)]
        >>> opt = torch.optim.SGD(modify.parameters(mlp, modify.Linear), lr=0.1)
    """
    return select(model, *where).parameters()
