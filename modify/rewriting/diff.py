"""``diff``: what a rewrite changed between two models, found by identity on the one walk.

Two models that share modules (a base and a sibling a rewriter made) are compared path by path
(:func:`~modify.rewriting.walk.positions`): the same object at a path is shared; a combinator of
the same class is *rebuilt* (a new object on the way to a change, compared further down); any
other module is *replaced*. Paths only in the second model are *added*, only in the first
*removed*. Parameters are shared, new or gone by identity, as siblings share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .._core.arguments import typechecked
from .._core.identity import group_by_identity
from ..combinators import Combinator
from .walk import positions


@dataclass(frozen=True)
class Diff:
    """What :func:`diff` found: ``str(d)`` is the text; the fields are the paths and names.

    Attributes:
        replaced: paths (in both models) whose module is another one, not a rebuilt combinator.
        added: outermost paths only in the second model, outside a replaced path.
        removed: outermost paths only in the first model, outside a replaced path.
        rebuilt: paths of combinators rebuilt on the way to a change (same class, new object).
        shared: the second model's names of the parameters both models hold (the same objects).
        new: the second model's names of its parameters the first does not hold.
        gone: the first model's names of its parameters the second does not hold.

    Example:
        >>> import modify
        >>> base = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
        >>> changes = modify.diff(base, modify.rewrite(base, lambda m: modify.GELU(), modify.ReLU))
        >>> changes.replaced, changes.shared, changes.new
        (['1'], ['0.weight', '0.bias'], [])
    """

    replaced: list[str]
    added: list[str]
    removed: list[str]
    rebuilt: list[str]
    shared: list[str]
    new: list[str]
    gone: list[str]
    text: str = field(repr=False)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


@typechecked
def diff(a: nn.Module, b: nn.Module) -> Diff:
    """What changed from ``a`` to ``b``: modules replaced, added and removed; parameters shared, new and gone.

    Modules are compared at each path by identity: the same object is shared (its subtree is
    not listed); a combinator of the same class that is another object was rebuilt on the way to
    a change (counted, and compared further down); any other module at the path was *replaced*,
    and everything below a replaced path belongs to that one entry (``diff(base, lora(base, 8))``
    lists each adapted layer once, with the adapter parameters it brought and where the old
    layer now sits inside the block). Paths only in ``b`` are *added*, only in ``a`` *removed*
    (the outermost of each). Parameters are shared, new or gone by identity (``p_a is p_b``),
    with element counts. Neither model is touched. As ``git diff`` for module trees; what
    ``print(a)`` beside ``print(b)`` leaves to the eye.

    Args:
        a: the model before (e.g. the base).
        b: the model after (e.g. a sibling made by a rewriter).

    Returns:
        A :class:`Diff`; ``print(diff(a, b))`` shows one line per replaced, added and removed
        path and a last line counting parameters.

    Raises:
        TypeError: ``a`` or ``b`` not a ``torch.nn.Module``.

    Example:
        >>> import modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> print(modify.diff(base, modify.select(base, "2").insert_after(modify.Scale(0.5))))
        Sequential -> Sequential: 1 replaced, 0 added, 0 removed, 1 rebuilt on the way
          replaced 2: Linear(in_features=8, out_features=2, bias=True) -> Sequential, the Linear kept at .0
        parameters: 4 shared (90 elements), 0 new (0), 0 gone (0)
        >>> adapted = modify.diff(base, modify.lora(base, rank=2))
        >>> adapted.replaced, len(adapted.new), len(adapted.shared), adapted.gone
        (['0', '2'], 4, 4, [])
    """
    before = {path: module for path, module, _ in positions(a)}
    after = {path: module for path, module, _ in positions(b)}
    replaced, rebuilt = [], []
    for path, module in after.items():
        old = before.get(path)
        if old is None or old is module or _under(path, replaced):
            continue
        same_combinator = isinstance(module, Combinator) and type(old) is type(module)
        (rebuilt if same_combinator else replaced).append(path)
    added = _outermost([p for p in after if p not in before and not _under(p, replaced)])
    removed = _outermost([p for p in before if p not in after and not _under(p, replaced)])
    a_params, b_params = _parameters(a), _parameters(b)
    shared = [name for key, name in b_params.items() if key in a_params]
    new = [name for key, name in b_params.items() if key not in a_params]
    gone = [name for key, name in a_params.items() if key not in b_params]
    a_named = dict(a.named_parameters(remove_duplicate=False))
    b_named = dict(b.named_parameters(remove_duplicate=False))
    lines = [f"{type(a).__name__} -> {type(b).__name__}: {len(replaced)} replaced, {len(added)} added, "
             f"{len(removed)} removed, {len(rebuilt)} rebuilt on the way"]
    for path in replaced:
        kept = next((p for p, m in after.items() if m is before[path] and _under(p, [path])), None)
        where = f", the {type(before[path]).__name__} kept at {_relative(kept, path)}" if kept is not None else ""
        lines.append(f"  replaced {_shown(path)}: {_described(before[path])} -> {_described(after[path])}{where}"
                     f"{_params(b_named, new, path, 'new')}{_params(a_named, gone, path, 'gone')}")
    lines += [f"  added {_shown(p)}: {_described(after[p])}{_params(b_named, new, p, 'new')}" for p in added]
    lines += [f"  removed {_shown(p)}: {_described(before[p])}{_params(a_named, gone, p, 'gone')}" for p in removed]
    counts = [f"{len(names)} {what} ({sum(named[n].numel() for n in names):,}{' elements' if what == 'shared' else ''})"
              for names, what, named in ((shared, "shared", b_named), (new, "new", b_named), (gone, "gone", a_named))]
    lines.append(f"parameters: {', '.join(counts)}")
    return Diff(replaced, added, removed, rebuilt, shared, new, gone, "\n".join(lines))


def _parameters(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> its first name`` in ``model``, each parameter object once."""
    grouped = group_by_identity(model.named_parameters(remove_duplicate=False))
    return {id(parameter): names[0] for names, parameter in grouped}


def _under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies strictly below one of ``roots`` (``""`` is above every other path)."""
    return any(root == "" or path.startswith(f"{root}.") for root in roots if root != path)


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not _under(p, paths)]


def _shown(path: str) -> str:
    return path or "<root>"


def _described(module: nn.Module) -> str:
    """``LoRA(rank=2, alpha=2)``: the class, with its ``extra_repr`` when it has a short one."""
    extra = module.extra_repr()
    short = extra and "\n" not in extra and len(extra) <= 60
    return f"{type(module).__name__}({extra})" if short else type(module).__name__


def _relative(name: str, path: str) -> str:
    """``name`` as seen from ``path``: ``.1.0`` below ``0`` (the whole name below the root)."""
    return name if path == "" else name[len(path):]


def _params(named: dict[str, nn.Parameter], names: list[str], path: str, what: str) -> str:
    """``; new .1.1.1.weight (2, 8), ...``: the parameters among ``names`` below ``path``, with shapes."""
    inside = [n for n in names if path == "" or n.startswith(f"{path}.")]
    if not inside:
        return ""
    return f"; {what} " + ", ".join(f"{_relative(n, path)} {tuple(named[n].shape)}" for n in inside)
