"""One model as a treescope tree: a node per module, a line per parameter, siblings' changes marked.

Built from treescope's rendering parts (``treescope.rendering_parts``), the same parts its own
handlers and ``__treescope_repr__`` methods use, so the picture folds, copies paths and colours
as any treescope rendering does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from treescope import rendering_parts as parts

from .._core.inference import traits_of
from ..traits import Binary, Elementwise, Matrix, Param, ParamFree, Reduction, Restructure, Tuple, Unary, Vector
from ..traits import Linear as LinearTrait
from ..traits import NonLinear

NEW_COLOR = "#ffd7a8"  # a module or parameter the first model does not have
SHARED_COLOR = "#c8ecc8"  # a parameter another model shown holds too
_TRAIT_ORDER = (Unary, Binary, Tuple, Param, ParamFree, LinearTrait, NonLinear, Restructure, Elementwise, Vector,
                Matrix, Reduction)  # fmt: skip


@dataclass(frozen=True)
class Marks:
    """What to mark in one model's picture.

    Args:
        shared: ids of parameters that another model shown holds too.
        base: ids of the first model's modules and parameters; ``None`` for the first model itself.
        base_shapes: the first model's ``{path: (class, child names)}``: a combinator rebuilt on
            the way to a change has the same and is not marked new.
        open_paths: paths of nodes to show expanded (those on the way to a change in any model).
    """

    shared: frozenset[int]
    base: frozenset[int] | None
    base_shapes: dict[str, tuple[type, tuple[str, ...]]]
    open_paths: frozenset[str]

    def is_new(self, obj: object) -> bool:
        """Whether ``obj`` (a parameter) is not the first model's."""
        return self.base is not None and id(obj) not in self.base

    def is_replaced(self, module: nn.Module, path: str) -> bool:
        """Whether ``module`` is new here: not the first model's, nor a rebuilt copy of its node at ``path``."""
        return self.is_new(module) and self.base_shapes.get(path) != shape_of(module)


def shape_of(module: nn.Module) -> tuple[type, tuple[str, ...]]:
    """A node's class and child names: what a rebuilt combinator keeps."""
    return type(module), tuple(module._modules)


def trait_names(module: nn.Module) -> str:
    """The module's traits, in the order of DESIGN's table (arity, parameters, linearity, kind)."""
    traits = traits_of(module)
    return " ".join(t.__name__ for t in _TRAIT_ORDER if t in traits)


def _badge(label: str, color: str) -> parts.RenderableTreePart:
    style = f"background:{color}; border-radius:3px; padding:0 3px; font-size:90%"
    return parts.siblings(" ", parts.custom_style(parts.text(label), style))


def _parameter_line(name: str, param: torch.Tensor, marks: Marks) -> parts.RenderableTreePart:
    dtype = str(param.dtype).removeprefix("torch.")
    badges = [_badge("trainable", "#dde7ff")] if param.requires_grad else [_badge("frozen", "#e6e6e6")]
    if marks.is_new(param):
        badges.append(_badge("new", NEW_COLOR))
    elif id(param) in marks.shared:
        badges.append(_badge("shared", SHARED_COLOR))
    shape = ", ".join(str(size) for size in param.shape)
    return parts.siblings(f"{name}: ", parts.abbreviation_color(parts.text(f"{dtype}[{shape}]")), *badges)


def _title(name: str, module: nn.Module, replaced: bool) -> parts.RenderableTreePart:
    extra = module.extra_repr()
    badges = [_badge("new", NEW_COLOR)] if replaced else []
    kind = parts.maybe_qualified_type_name(type(module))
    return parts.siblings(f"{name}: " if name else "", kind, f"({extra})" if extra else "", *badges)


def _comment(path: str, module: nn.Module) -> parts.RenderableTreePart:
    """``# path (= reference name) · traits``."""
    where = path or "(root)"
    reference = getattr(module, "reference_name", None)
    if reference and reference != path:
        where += f" = {reference}"
    return parts.comment_color(parts.text(f"  # {where} · {trait_names(module)}"))


def _direct_parameters(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(recurse=False)
    yield from ((n, b) for n, b in module.named_buffers(recurse=False) if b is not None)


def module_node(
    module: nn.Module, name: str, path: str, marks: Marks, inside_new: bool = False
) -> parts.RenderableAndLineAnnotations:
    """The node of ``module`` (at ``path``, child name ``name``) with its children and parameters.

    Args:
        module: any ``torch.nn.Module`` (modify's or not).
        name: its name in its parent (``""`` for the root).
        path: its dotted path from the root (``""`` for the root).
        marks: what to mark (see :class:`Marks`).
        inside_new: whether an ancestor is already marked new (only the top of a new part is).

    Returns:
        A treescope renderable: foldable when the module has children or parameters.
    """
    replaced = not inside_new and marks.is_replaced(module, path)
    lines: list = [
        module_node(child, child_name, f"{path}.{child_name}" if path else child_name, marks, inside_new or replaced)
        for child_name, child in module.named_children()
    ]
    lines += [_parameter_line(n, t, marks) for n, t in _direct_parameters(module)]
    background = NEW_COLOR if replaced else None
    title = _title(name, module, replaced)
    if not lines:
        line = parts.siblings(title, _comment(path, module))
        return parts.build_one_line_tree_node(line, path=path or None, background_color=background)
    state = parts.ExpandState.EXPANDED if path in marks.open_paths else parts.ExpandState.COLLAPSED
    folded = parts.comment_color(parts.text(f"{len(lines)} {'entry' if len(lines) == 1 else 'entries'}"))
    return parts.build_foldable_tree_node_from_children(
        prefix=parts.siblings(title, " [", parts.fold_condition(collapsed=folded)),
        children=[parts.fold_condition(expanded=parts.on_separate_lines(lines))], suffix="]", path=path or None,
        background_color=background, first_line_annotation=_comment(path, module), expand_state=state,
    )
