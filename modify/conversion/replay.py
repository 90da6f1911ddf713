"""Traced code without a primitive, as a :class:`~modify.Function` leaf that replays it.

A node's arguments become a *template*: the values it takes (``_In``), the model's tensors it
reads (``_Tensor``: parameters and buffers, registered on the leaf as the very same objects),
size arithmetic recomputed at run time (``_Call`` of ``meta`` nodes, e.g. ``x.size(1)``) and
constants (kept as they are: numbers, dtypes, closures' values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from ..primitives.function import Function
from .trace import attribute, is_meta, is_parameter_or_buffer


@dataclass(frozen=True)
class _In:
    index: int


@dataclass(frozen=True)
class _Tensor:
    key: str


@dataclass(frozen=True)
class _Call:
    op: str
    target: object
    args: tuple
    kwargs: dict


def _evaluate(template: object, values: tuple, tensors: dict) -> object:
    if isinstance(template, _In):
        return values[template.index]
    if isinstance(template, _Tensor):
        return tensors[template.key]
    if isinstance(template, _Call):
        args = _evaluate(template.args, values, tensors)
        kwargs = _evaluate(template.kwargs, values, tensors)
        if template.op == "call_method":
            return getattr(args[0], template.target)(*args[1:], **kwargs)
        return template.target(*args, **kwargs)
    if isinstance(template, (tuple, list)):
        return type(template)(_evaluate(t, values, tensors) for t in template)
    if isinstance(template, dict):
        return {k: _evaluate(v, values, tensors) for k, v in template.items()}
    if isinstance(template, slice):
        return slice(*(_evaluate(t, values, tensors) for t in (template.start, template.stop, template.step)))
    return template


def _sizes_only(template: object) -> bool:
    """Whether ``template`` reads its inputs for their sizes alone (``x.size(1)``), never their values."""
    if isinstance(template, _In):
        return False
    if isinstance(template, _Call):
        if template.op == "call_method" and template.target == "size":
            return all(_sizes_only(a) for a in template.args[1:])
        return _sizes_only(template.args) and _sizes_only(template.kwargs)
    if isinstance(template, (tuple, list)):
        return all(_sizes_only(t) for t in template)
    if isinstance(template, dict):
        return all(_sizes_only(t) for t in template.values())
    if isinstance(template, slice):
        return all(_sizes_only(t) for t in (template.start, template.stop, template.step))
    return True


class Replay:
    """``fn`` of a converted :class:`~modify.Function`: runs one traced call on the value it gets.

    A call that reads its inputs only for their sizes and reads no tensor that needs a gradient
    (rotary ``cos``/``sin`` tables from ``inv_freq``, a causal mask) is kept for the last sizes
    seen, unless the call using it writes to it in place or the model returns it. It is
    recomputed when the sizes, dtypes, devices, the tensors it reads (their objects or their
    in-place versions) or inference mode change, and whenever ``torch.compile`` traces it.
    """

    def __init__(self, call: _Call, arity: int, keep: bool = True):
        self.call, self.arity = call, arity
        self.per_shape = keep and _sizes_only(call)
        self._kept: tuple[tuple, tuple, object] | None = None

    def __call__(self, x, **tensors):
        values = (x,) if self.arity == 1 else x
        if not self.per_shape or torch.compiler.is_compiling() or any(t.requires_grad for t in tensors.values()):
            return _evaluate(self.call, values, tensors)
        key = (tuple((v.shape, v.dtype, v.device) for v in values), torch.is_inference_mode_enabled())
        sources = tuple((t, t._version) for t in tensors.values())
        kept = self._kept
        if kept is not None and kept[0] == key and len(kept[1]) == len(sources) and all(
            a is b and u == v for (a, u), (b, v) in zip(kept[1], sources)
        ):
            return kept[2]
        result = _evaluate(self.call, values, tensors)
        self._kept = (key, sources, result)
        return result

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_kept": None}  # copies and pickles recompute their tables


class _Builder:
    """Turns a node's arguments into a template, collecting its inputs and tensors."""

    def __init__(self, root: nn.Module, values: set[fx.Node]):
        self.root, self.values = root, values
        self.inputs: list[fx.Node] = []
        self.parameters: dict[str, nn.Parameter] = {}
        self.buffers: dict[str, tuple[torch.Tensor, bool]] = {}

    def template(self, arg: object) -> object:
        if isinstance(arg, fx.Node):
            return self._node(arg)
        if isinstance(arg, (tuple, list)):  # fx's immutable_list as a plain list (torch.compile reads it)
            return (tuple if isinstance(arg, tuple) else list)(self.template(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.template(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.template(arg.start), self.template(arg.stop), self.template(arg.step))
        return arg

    def _node(self, node: fx.Node) -> object:
        if node in self.values:
            if node not in self.inputs:
                self.inputs.append(node)
            return _In(self.inputs.index(node))
        if node.op == "get_attr":
            return self._tensor(node.target)
        if is_meta(node) or node.op in ("call_function", "call_method"):  # a size, or a step computed from no input
            target = "reshape" if node.target == "view" else node.target
            return _Call(node.op, target, self.template(node.args), self.template(node.kwargs))
        raise TypeError(f"modify.convert: cannot replay the node '{node.name}' ({node.op} {node.target})")

    def hold(self, path: str, module: nn.Module) -> None:
        """Register ``module``'s own tensors on the leaf too (it calls ``module``, which reads them)."""
        for name, _ in module.named_parameters():
            self._tensor(f"{path}.{name}")
        for name, _ in module.named_buffers():
            self._tensor(f"{path}.{name}")

    def _tensor(self, target: str) -> object:
        value = attribute(self.root, target)
        if not isinstance(value, torch.Tensor):
            return value
        key = target.replace(".", "_")
        is_parameter, persistent = is_parameter_or_buffer(self.root, target)
        if is_parameter:
            self.parameters[key] = value
        else:
            self.buffers[key] = (value, persistent)
        return _Tensor(key)


def _writes_or_returns(user: fx.Node) -> bool:
    """Whether ``user`` may change its input in place (``x.add_``, a mutable ATen op) or returns it."""
    if user.op == "output":
        return True
    name = user.target if isinstance(user.target, str) else getattr(user.target, "__name__", "")
    mutable = isinstance(user.target, torch._ops.OpOverload) and user.target._schema.is_mutable
    return mutable or (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")


def opaque_function(
    root: nn.Module, node: fx.Node, values: set[fx.Node], name: str, first_input: fx.Node
) -> tuple[Function, list[fx.Node]]:
    """A :class:`~modify.Function` replaying ``node``, and the value nodes it takes, in order.

    A ``view`` replays as ``reshape`` (the same values where the view exists; a ``contiguous``
    before it is dropped as an alias). A value computed from no input (a mask buffer, a
    parameter-only ``gamma.view(...)``) takes the values whose sizes it reads, or ``first_input``
    (the model's input) when it reads none, and ignores them but for their sizes.
    """
    builder = _Builder(root, values)
    target = "reshape" if node.op == "call_method" and node.target == "view" else node.target
    call = _Call(node.op, target, builder.template(node.args), builder.template(node.kwargs))
    if node.op == "call_module":
        module = attribute(root, node.target)
        call = _Call("call_function", module, call.args, call.kwargs)
        builder.hold(node.target, module)
    if not builder.inputs:
        builder.inputs.append(first_input)
    arity = len(builder.inputs)
    function = Function(Replay(call, arity, keep=not any(_writes_or_returns(u) for u in node.users)), name=name, arity=arity, parameters=builder.parameters, buffers=builder.buffers)
    return function, builder.inputs
